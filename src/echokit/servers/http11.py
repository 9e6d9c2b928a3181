"""HTTP/1.1 for the gunicorn worker: requests parsed in C, the WSGI environ built directly, each answer in one send.

gunicorn's own path costs B ~90 µs of CPU per request before any app code runs (its pure-Python
parser, then a ``Response`` object that writes status line + headers and the body in separate
sends). Here `httptools <https://github.com/MagicStack/httptools>`_ (llhttp, the parser of
Node.js) parses the request from callbacks, :class:`Connection` builds the PEP 3333 environ from
them, and :meth:`Connection.respond` writes status line, headers and body with one ``sendall``
when the app's body is known at once (Flask's is).

What gunicorn does and this keeps (its ``http/message.py``, ``http/wsgi.py``, ``workers/base*.py``):

* limits: a request line over ``limit_request_line`` (at most 8190) -> 414; more than
  ``limit_request_fields`` header fields or one over ``limit_request_field_size`` -> 431; anything
  llhttp refuses (bad method, target, version, header, framing, bare LF, obsolete folding,
  Content-Length with Transfer-Encoding, ...) and what gunicorn refuses on top (HTTP versions
  other than 1.0/1.1, two Host or Content-Type fields, chunked HTTP/1.0, asterisk-form for
  anything but OPTIONS) -> 400; an unknown transfer coding -> 501; an Expect other than
  100-continue -> 417. Every such answer is gunicorn_patches' ``write_json_error`` JSON, with
  ``Connection: close``.
* header fields whose name has an underscore are dropped (``header_map = "drop"``: ``X_Forwarded_For``
  could otherwise pose as ``X-Forwarded-For``), except the ``forwarder_headers`` a trusted peer
  (``forwarded_allow_ips``) may send; ``secure_scheme_headers`` from a trusted peer set
  ``wsgi.url_scheme``; repeated fields are joined with ",".
* the answer: ``Server`` (the project's name) and ``Date`` first, ``Connection: close|keep-alive``,
  hop-by-hop fields from the app dropped, status and header fields validated (no response
  splitting), Content-Length honoured (a longer body is cut), chunked for HTTP/1.1 bodies of
  unknown length, no body for HEAD/1xx/204/304, ``100 Continue`` before the app runs.
* keep-alive by HTTP/1.1 and 1.0 rules, pipelined requests served in order, an unread request body
  drained before the next request.

Not here, because neither service uses them: HTTP/2, TLS, the PROXY protocol, uWSGI and the
``pre_request``/``post_request`` hooks (the worker hands such configurations to gunicorn's own
code); ``wsgi.early_hints`` and sendfile; and methods llhttp does not know get a 400, not a 405.
"""

from __future__ import annotations

import email.utils
import ipaddress
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from echokit.servers import SERVER_NAME
from echokit.servers.gunicorn_patches import write_json_error

__all__ = ["Connection", "HTTPError", "Request", "ServerConfig"]

# What one recv() asks for, as gunicorn's reader: it also bounds how many pipelined requests one
# read can queue (each is parsed as soon as its bytes are fed).
RECV_BYTES = 8192
# gunicorn's caps: limit_request_line is at most 8190 (0 there means "no limit": 1 MiB, as its
# C-parser path), at most 32768 header fields, 8190 bytes a field when the setting is 0 or less.
MAX_REQUEST_LINE = 8190
UNLIMITED_REQUEST_LINE = 1024 * 1024
MAX_HEADER_FIELDS = 32768
DEFAULT_FIELD_SIZE = 8190
_CACHE_MAX = 512  # distinct header names remembered (requests and answers): bounded whatever clients send
_OWS = " \t"  # optional whitespace around a field value


class HTTPError(Exception):
    """A request refused before the app saw it: the status, reason and details of its JSON answer."""

    def __init__(self, status: int, reason: str, details: str) -> None:
        super().__init__(details)
        self.status, self.reason, self.details = status, reason, details


def _bad(details: str) -> HTTPError:
    return HTTPError(400, "Bad Request", details)


class ServerConfig:
    """What every connection of a worker shares, read once from gunicorn's settings."""

    def __init__(self, cfg: Any, log: Any, errors: Any, file_wrapper: Any) -> None:
        line = cfg.limit_request_line
        self.limit_request_line = (
            UNLIMITED_REQUEST_LINE if line == 0 else MAX_REQUEST_LINE if line < 0 or line > MAX_REQUEST_LINE else line
        )
        fields = cfg.limit_request_fields
        self.limit_request_fields = MAX_HEADER_FIELDS if fields <= 0 or fields > MAX_HEADER_FIELDS else fields
        size = cfg.limit_request_field_size
        self.limit_request_field_size = size if size > 0 else DEFAULT_FIELD_SIZE
        # gunicorn's bound on the bytes of one request's head, whatever its fields look like.
        self.max_head_bytes = self.limit_request_fields * (self.limit_request_field_size + 2) + 4 + (
            self.limit_request_line
        )
        self.keepalive = cfg.keepalive > 0
        self.log = log
        self.header_map = cfg.header_map
        self.secure_scheme_headers: dict[str, str] = dict(cfg.secure_scheme_headers)
        self.forwarder_headers = frozenset(cfg.forwarder_headers)
        self._allow_all = "*" in cfg.forwarded_allow_ips
        self._allow_networks = cfg.forwarded_allow_networks()
        self.script_name = os.environ.get("SCRIPT_NAME", "")
        self.base_environ: dict[str, Any] = {
            "wsgi.errors": errors,
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,  # greenlets: several requests of one process at a time
            "wsgi.multiprocess": cfg.workers > 1,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": file_wrapper,
            "wsgi.input_terminated": True,  # wsgi.input ends (b"") where the request body does
            "wsgi.url_scheme": "http",
            "SERVER_SOFTWARE": SERVER_NAME,
            "SCRIPT_NAME": self.script_name,
        }

    def trusts(self, addr: Any) -> bool:
        """Whether a peer may set forwarding and scheme headers (gunicorn's ``forwarded_allow_ips``)."""
        if not isinstance(addr, tuple):
            return True  # a unix socket: whoever can reach it is local
        if self._allow_all:
            return True
        try:
            ip = ipaddress.ip_address(addr[0])
        except ValueError:
            return False
        return any(ip in network for network in self._allow_networks)


# --- request header names: what each one means for the environ, worked out once per spelling ---

_PLAIN, _CONTENT_TYPE, _CONTENT_LENGTH, _HOST, _EXPECT, _TRANSFER_ENCODING, _UNDERSCORE = range(7)
_SCHEME = 7  # (in the set of what a request's fields have set: a scheme header)
# name as sent -> (kind, environ key, upper-cased name)
_request_names: dict[bytes, tuple[int, str, str]] = {}
_CGI_KEYS = {_CONTENT_TYPE: "CONTENT_TYPE", _CONTENT_LENGTH: "CONTENT_LENGTH"}
_SPECIAL = {"CONTENT-TYPE": _CONTENT_TYPE, "CONTENT-LENGTH": _CONTENT_LENGTH, "HOST": _HOST, "EXPECT": _EXPECT,
            "TRANSFER-ENCODING": _TRANSFER_ENCODING}


def _request_name(name: bytes) -> tuple[int, str, str]:
    # The name is a token (llhttp checked), so latin-1 upper-casing cannot turn it into another one.
    upper = name.decode("latin-1").upper()
    kind = _UNDERSCORE if "_" in upper else _SPECIAL.get(upper, _PLAIN)
    key = _CGI_KEYS.get(kind) or "HTTP_" + upper.replace("-", "_")
    info = (kind, key, upper)
    if len(_request_names) < _CACHE_MAX:
        _request_names[name] = info
    return info


_KNOWN_CODINGS = frozenset({"chunked", "identity", "gzip", "deflate", "compress"})


def _check_transfer_encoding(value: str, version_10: bool) -> bool:
    """gunicorn's rules on top of llhttp's: 501 for an unknown coding, 400 for chunked HTTP/1.0.

    Returns whether the connection must close after this request (a compressed body: gunicorn's rule).
    """
    codings = [part.strip(" \t").lower() for part in value.split(",")]
    for coding in codings:
        if coding not in _KNOWN_CODINGS:
            raise HTTPError(501, "Not Implemented", f"Unsupported transfer coding: {coding!r}")
    if version_10 and "chunked" in codings:
        raise _bad("Invalid HTTP Header: 'TRANSFER-ENCODING'")
    return any(coding in ("gzip", "deflate", "compress") for coding in codings)


class Request:
    """One request as parsed: its environ, how its connection goes on, and its body so far."""

    __slots__ = ("body", "complete", "delivered", "discard", "environ", "expect_continue", "fields", "headers",
                 "keep_alive", "method", "url", "version")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.fields = 0  # header fields seen, trailers included (the limit counts them all)
        self.body = bytearray()
        self.complete = False  # the whole message, body included, has been parsed
        self.delivered = False  # its head is complete and queued for the app
        self.discard = False  # the app is done with it: drop the rest of its body
        self.keep_alive = True
        self.expect_continue = False
        self.environ: dict[str, Any] = {}
        self.method = ""
        self.version = ""


class RequestBody:
    """``wsgi.input``: the request's body as it arrives, never more (Content-Length or chunked framing)."""

    __slots__ = ("_conn", "_req")

    def __init__(self, conn: Connection, req: Request) -> None:
        self._conn, self._req = conn, req

    def _fill(self, wanted: int) -> None:
        req, conn = self._req, self._conn
        while len(req.body) < wanted and not req.complete and conn.read_more():
            pass
        if conn.failed is not None and conn.failed_in is req:
            raise conn.failed  # its body is malformed (a bad chunk): the app sees the error, as under gunicorn

    def read(self, size: int | None = -1) -> bytes:
        body = self._req.body
        if size is None or size < 0:
            self._fill(1 << 62)
            size = len(body)
        else:
            self._fill(size)
        data = bytes(body[:size])
        del body[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        body = self._req.body
        limit = size if size is not None and size >= 0 else 1 << 62
        while True:
            end = body.find(b"\n", 0, limit)
            if end >= 0:
                return self.read(end + 1)
            if len(body) >= limit or self._req.complete or not self._conn.read_more():
                return self.read(min(limit, len(body)))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class Connection:
    """One client connection: feeds what arrives to llhttp, queues the requests it yields, answers them.

    The parser's callbacks (``on_*``) run inside ``feed_data``; an error they raise comes back
    wrapped in ``HttpParserCallbackError`` and is unwrapped by :meth:`_feed`.
    """

    def __init__(self, sock: Any, addr: Any, server: Any, config: ServerConfig) -> None:
        self.sock = sock
        self.config = config
        self.parser = HttpRequestParser(self)
        self.ready: deque[Request] = deque()  # heads complete, not yet handed out
        self.current: Request | None = None  # the message the parser is in
        self.serving: Request | None = None  # the last request handed out
        self.failed: HTTPError | None = None  # the parser refused the input: nothing more is read
        self.failed_in: Request | None = None  # ... while in this message
        self.ended = False  # no request after the queued ones: EOF, an error, or a message that closes
        self.head_bytes = 0  # bytes read since the current message began, while its head is incomplete
        self.trusted = config.trusts(addr)
        base = dict(config.base_environ)
        base["gunicorn.socket"] = sock
        if isinstance(addr, tuple):
            base["REMOTE_ADDR"], base["REMOTE_PORT"] = addr[0], str(addr[1])
        else:
            base["REMOTE_ADDR"] = addr.decode() if isinstance(addr, bytes) else str(addr)
        if isinstance(server, tuple):
            base["SERVER_NAME"], base["SERVER_PORT"] = server[0], str(server[1])
        else:
            base["SERVER_NAME"], base["SERVER_PORT"] = str(server), ""
        self.base_environ = base

    # --- reading ---

    def next_request(self) -> Request | None:
        """The next request, its head complete; None when the connection has no more (EOF, or it closes).

        Raises :class:`HTTPError` for a request the parser refused: the caller answers it and closes.
        """
        previous = self.serving
        if previous is not None and not previous.complete:  # the app left part of the body unread
            previous.discard = True
            previous.body.clear()
            while not previous.complete:
                if not self.read_more():
                    return None
        while not self.ready:
            if self.ended:
                failed = self.failed
                if failed is not None and (self.failed_in is None or not self.failed_in.delivered):
                    raise failed
                return None
            self.read_more()
        self.serving = request = self.ready.popleft()
        return request

    def read_more(self) -> bool:
        """Read once and feed it; False when nothing more will come (EOF, an error, the last request)."""
        if self.ended:
            return False
        data = self.sock.recv(RECV_BYTES)
        if not data:
            self.ended = True  # the client is done (or gave up mid-request: gunicorn ignores that quietly too)
            return False
        self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserCallbackError as exc:
            context = exc.__context__
            if not isinstance(context, HTTPError):
                raise (context or exc) from None  # a bug of ours, not the client's: the worker's 500
            self._fail(context)
        except HttpParserUpgrade:
            # Upgrade or CONNECT: llhttp stops after the head. The request is served (neither service
            # upgrades anything), then the connection closes; its body and what follows are not read.
            request = self.ready[-1] if self.ready else self.serving
            if request is not None:
                request.keep_alive = False
                request.complete = True
            self.ended = True
        except HttpParserError as exc:
            self._fail(_bad(str(exc)))
        else:
            current = self.current
            if current is not None and not current.delivered:  # a head still incomplete: count what it took
                self.head_bytes += len(data)  # (all of this read: a little more than the head's own share)
                if self.head_bytes > self.config.max_head_bytes:
                    self._fail(_limit_headers("max buffer headers"))  # llhttp buffers a field until it ends

    def _fail(self, error: HTTPError) -> None:
        if self.ended:
            return  # bytes after a request that closes the connection: never parsed (llhttp refuses them)
        self.failed, self.failed_in, self.ended = error, self.current, True

    # --- parser callbacks ---

    def on_message_begin(self) -> None:
        self.current = Request()
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        request = self.current
        assert request is not None
        request.url += url  # llhttp hands a target split across reads over in pieces
        if len(request.url) > self.config.limit_request_line:
            raise _too_long(len(request.url), self.config.limit_request_line)

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.current
        assert request is not None
        request.fields += 1
        config = self.config
        if request.fields > config.limit_request_fields:
            raise _limit_headers("limit request headers fields")
        if len(name) + len(value) + 4 > config.limit_request_field_size:  # "name: value\r\n"
            raise _limit_headers("limit request headers fields size")
        if not request.delivered:  # not a chunked body's trailer (ignored, as it is by gunicorn's environ)
            if request.fields == 1:
                self._check_request_line(request)
            request.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        if not request.headers:
            self._check_request_line(request)
        parser = self.parser
        request.keep_alive = parser.should_keep_alive()
        self._build_environ(request)
        request.delivered = True
        self.ready.append(request)

    def on_body(self, body: bytes) -> None:
        request = self.current
        if request is not None and not request.discard:
            request.body += body

    def on_message_complete(self) -> None:
        request = self.current
        if request is not None:
            request.complete = True
            if not request.keep_alive:
                self.ended = True  # llhttp refuses anything after it; gunicorn closes after the answer
        self.current = None

    # --- the environ ---

    def _check_request_line(self, request: Request) -> None:
        parser = self.parser
        request.method = parser.get_method().decode("latin-1")
        request.version = parser.get_http_version()
        # "METHOD SP target SP HTTP/x.y": the line gunicorn measures (without its CRLF)
        size = len(request.method) + len(request.url) + 10
        if size > self.config.limit_request_line:
            raise _too_long(size, self.config.limit_request_line)
        if request.version not in ("1.1", "1.0"):
            raise _bad(f"Invalid HTTP Version 'HTTP/{request.version}'")

    def _build_environ(self, request: Request) -> None:
        environ = self.base_environ.copy()
        environ["REQUEST_METHOD"] = request.method
        environ["SERVER_PROTOCOL"] = "HTTP/1.1" if request.version == "1.1" else "HTTP/1.0"
        script_name = self._headers_into(environ, request)
        url = request.url
        if url[:1] != b"/":  # origin-form ("/path?query") nearly always
            url = self._target_path(request.method, url)
        if b"#" in url:
            url = url.partition(b"#")[0]
        path, _, query = url.partition(b"?")
        environ["RAW_URI"] = request.url.decode("latin-1")
        environ["QUERY_STRING"] = query.decode("latin-1")
        if script_name:
            if not path.startswith(script_name.encode("latin-1")):
                details = f"Request path {path.decode('latin-1')!r} does not start with SCRIPT_NAME {script_name!r}"
                raise HTTPError(500, "Internal Server Error", details)  # gunicorn's ConfigurationProblem
            path = path[len(script_name):]
            environ["SCRIPT_NAME"] = script_name
        # PEP 3333: the path percent-decoded, its bytes as latin-1 characters
        environ["PATH_INFO"] = (_unquote(path) if b"%" in path else path).decode("latin-1")
        environ["wsgi.input"] = RequestBody(self, request)
        request.environ = environ

    def _headers_into(self, environ: dict[str, Any], request: Request) -> str:
        """The header fields as CONTENT_* and HTTP_* keys (gunicorn's mapping); returns SCRIPT_NAME."""
        config = self.config
        script_name = config.script_name
        repeated: dict[str, list[str]] | None = None
        seen: set[int] = set()
        for name, raw_value in request.headers:
            kind, key, upper = _request_names.get(name) or _request_name(name)
            value = raw_value.decode("latin-1").strip(_OWS)
            if kind:
                if kind in (_CONTENT_TYPE, _CONTENT_LENGTH):
                    if kind in seen:  # (llhttp refuses a second Content-Length itself)
                        raise _bad(f"Invalid HTTP Header: {upper!r}")
                    seen.add(kind)
                    environ[key] = value
                    continue
                if not self._special_header(kind, upper, value, request, seen):
                    continue
                if upper == "SCRIPT_NAME":
                    script_name = value  # from a trusted peer (forwarder_headers)
            if self.trusted and upper in config.secure_scheme_headers:
                self._scheme_header(environ, upper, value, seen)
            if key in environ:
                if repeated is None:
                    repeated = {}
                repeated.setdefault(key, [environ[key]]).append(value)
            else:
                environ[key] = value
        if repeated:
            for key, values in repeated.items():
                environ[key] = ",".join(values)  # joined once: joining one by one copies the value each time
        return script_name

    def _special_header(self, kind: int, upper: str, value: str, request: Request, seen: set[int]) -> bool:
        """gunicorn's rules for Host, Expect, Transfer-Encoding and names with '_'; False: drop the field."""
        if kind == _UNDERSCORE:
            forwarders = self.config.forwarder_headers
            if self.trusted and (upper in forwarders or "*" in forwarders):
                return True
            if self.config.header_map == "drop":
                return False  # as gunicorn: X_Forwarded_For could pose as X-Forwarded-For
            if self.config.header_map != "dangerous":
                raise _bad(f"Invalid HTTP Header: {upper!r}")
        elif kind == _HOST:
            if kind in seen:
                raise _bad("Invalid HTTP Header: 'HOST'")
            seen.add(kind)
        elif kind == _EXPECT:
            if value.lower() != "100-continue":
                raise HTTPError(417, "Expectation Failed", f"Unable to comply with expectation: {value!r}")
            request.expect_continue = request.version == "1.1"  # HTTP/1.0 never gets a 100
        elif kind == _TRANSFER_ENCODING and _check_transfer_encoding(value, request.version == "1.0"):
            request.keep_alive = False
        return True

    def _scheme_header(self, environ: dict[str, Any], upper: str, value: str, seen: set[int]) -> None:
        """A trusted peer's secure_scheme_headers set wsgi.url_scheme; two that disagree are refused."""
        scheme = "https" if value == self.config.secure_scheme_headers[upper] else "http"
        if _SCHEME in seen and environ["wsgi.url_scheme"] != scheme:
            raise _bad("Contradictory scheme headers")
        seen.add(_SCHEME)
        environ["wsgi.url_scheme"] = scheme

    @staticmethod
    def _target_path(method: str, url: bytes) -> bytes:
        """The path and query of a target that is not origin-form, as gunicorn reads it."""
        if url == b"*":
            if method != "OPTIONS":
                raise _bad("Invalid Request Line '*'")  # RFC 9112 3.2.4: asterisk-form is for OPTIONS only
            return url
        scheme_end = url.find(b"://")
        if scheme_end > 0:  # absolute-form: the authority is not part of the path
            slash = url.find(b"/", scheme_end + 3)
            rest = url[slash:] if slash >= 0 else b""
            if rest[:1] != b"/":
                query = url.find(b"?", scheme_end + 3)
                rest = url[query:] if query >= 0 else b""
            return rest
        if method == "CONNECT":  # authority-form
            return b""
        raise _bad("Invalid Request Line")

    # --- answering ---

    def respond(self, request: Request, app: Callable[..., Iterable[bytes]], must_close: bool) -> bool:
        """Run ``app`` for ``request`` and write its answer; whether the connection stays open."""
        answer = _Answer(self, request, must_close or not self.config.keepalive or not request.keep_alive)
        if request.expect_continue:
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            result = app(request.environ, answer.start_response)
            try:
                if type(result) is list and len(result) == 1:
                    answer.send_all(result[0])  # most answers: status line, headers and body in one send
                elif type(result) in (list, tuple):
                    answer.send_all(b"".join(result))
                else:
                    for chunk in result:
                        answer.write(chunk)
                    answer.finish()
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except OSError:
            raise  # the client went away: the caller closes quietly
        except Exception:
            if answer.head_sent:  # a 500 now would corrupt the answer under way: cut it off
                self.config.log.exception("Error handling request")
                return False
            self.config.log.exception("Error handling request %s %s", request.method, request.environ.get("RAW_URI"))
            write_json_error(self.sock, 500, "Internal Server Error", "")
            return False
        return not answer.close


def _too_long(size: int, limit: int) -> HTTPError:
    return HTTPError(414, "URI Too Long", f"Request Line is too large ({size} > {limit})")  # gunicorn's words


def _limit_headers(what: str) -> HTTPError:
    return HTTPError(431, "Request Header Fields Too Large", f"Error parsing headers: '{what}'")


_HEX = {(a + b).encode(): bytes([int(a + b, 16)]) for a in "0123456789abcdefABCDEF" for b in "0123456789abcdefABCDEF"}


def _unquote(path: bytes) -> bytes:
    """Percent-decoding as ``urllib.parse.unquote_to_bytes`` (invalid escapes stay as they are)."""
    parts = path.split(b"%")
    out = [parts[0]]
    for part in parts[1:]:
        byte = _HEX.get(part[:2])
        out.append(byte + part[2:] if byte is not None else b"%" + part)
    return b"".join(out)


# --- answers ---

# RFC 9110 5.6.2 token (header names) and 5.5 field values; RFC 9112 4 status: gunicorn's checks.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(r"[ \t\x21-\x7e\x80-\xff]*")
_STATUS = re.compile(r"[0-9]{3}(?: [ \t\x21-\x7e\x80-\xff]*)?")
# Fields the server writes itself or that describe this connection only (gunicorn's hop_headers).
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers", "transfer-encoding",
     "upgrade", "server", "date"}
)
_NORMAL, _LENGTH, _DROP = range(3)
_answer_names: dict[str, int] = {}  # header name from the app -> _NORMAL, _LENGTH or _DROP, validated once


def _answer_name(name: Any) -> int:
    if not isinstance(name, str):
        raise TypeError(f"{name!r} is not a string")
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"Invalid response header name {name!r}")
    lower = name.lower()
    kind = _LENGTH if lower == "content-length" else _DROP if lower in _HOP_BY_HOP else _NORMAL
    if len(_answer_names) < _CACHE_MAX:
        _answer_names[name] = kind
    return kind


def _answer_fields(headers: list[tuple[str, str]]) -> tuple[list[str], int | None]:
    """The app's header fields as lines, checked as gunicorn does (no response splitting), without
    hop-by-hop ones; and the Content-Length they announce."""
    lines = []
    length = None
    for name, value in headers:
        kind = _answer_names.get(name)
        if kind is None:
            kind = _answer_name(name)
        if not isinstance(value, str):
            raise TypeError(f"{value!r} is not a string")
        if not (value.isascii() and value.isprintable()) and not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"Invalid response header value for {name!r}")  # a CR or LF, say
        if kind:
            if kind == _DROP:
                continue
            length = int(value)
        lines.append(f"{name}: {value.strip(_OWS)}\r\n")
    return lines, length


class _Date:
    """The Date header's value, formatted once a second."""

    second = -1
    line = ""

    @classmethod
    def header(cls) -> str:
        now = time.time()
        if int(now) != cls.second:
            cls.second = int(now)
            cls.line = f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n"
        return cls.line


class _Answer:
    """One answer being written: start_response's status and headers, then the body with its framing."""

    __slots__ = ("chunked", "close", "conn", "head", "head_sent", "length", "no_body", "remaining", "request",
                 "status")

    def __init__(self, conn: Connection, request: Request, close: bool) -> None:
        self.conn, self.request, self.close = conn, request, close
        self.status: str | None = None
        self.head = b""
        self.head_sent = False
        self.chunked = False
        self.no_body = False
        self.length: int | None = None
        self.remaining = 0

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[
        [bytes], None
    ]:
        if exc_info:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("Response headers already set!")
        if not isinstance(status, str):
            raise TypeError(f"{status!r} is not a string")
        if not _STATUS.fullmatch(status):
            raise ValueError(f"Invalid status {status!r}")
        code = int(status[:3])
        lines, length = _answer_fields(headers)
        method = self.request.method
        self.no_body = method == "HEAD" or code in (204, 304) or 100 <= code < 200
        if self.no_body and length is not None and (code == 204 or 100 <= code < 200):
            lines = [line for line in lines if not line.lower().startswith("content-length:")]
            length = None  # RFC 9110 6.4.2: never a Content-Length on 1xx or 204
        self.length = length
        self.remaining = length or 0
        self.chunked = length is None and self.request.version == "1.1" and not self.no_body
        if length is None and not self.chunked and not self.no_body:
            self.close = True  # the body ends where the connection does
        self.status = status
        first = (f"HTTP/{self.request.version} {status}\r\nServer: {SERVER_NAME}\r\n{_Date.header()}"
                 f"Connection: {'close' if self.close else 'keep-alive'}\r\n")
        if self.chunked:
            first += "Transfer-Encoding: chunked\r\n"
        self.head = (first + "".join(lines) + "\r\n").encode("latin-1")
        return self.write

    def _framed(self, data: bytes) -> bytes:
        if self.no_body:
            return b""
        if self.length is not None:
            if len(data) > self.remaining:
                data = data[:self.remaining]  # never more than the Content-Length the app announced
            self.remaining -= len(data)
            return data
        if self.chunked:
            return b"%X\r\n%s\r\n" % (len(data), data) if data else b""
        return data

    def _send(self, data: bytes) -> None:
        if not self.head_sent:
            if self.status is None:
                raise AssertionError("the app sent a body before start_response")
            self.head_sent = True
            data = self.head + data
        if data:
            sock = self.conn.sock
            sent = sock.send(data)  # nearly always all of it: cheaper than gevent's sendall
            if sent < len(data):
                sock.sendall(memoryview(data)[sent:])

    def write(self, data: bytes) -> None:
        """A body chunk (also start_response's legacy ``write``)."""
        if not isinstance(data, bytes):
            raise TypeError(f"{data!r} is not a byte")
        self._send(self._framed(data))

    def send_all(self, body: bytes) -> None:
        """The whole body at once: head, body and chunked's last chunk in one send."""
        if not isinstance(body, bytes):
            raise TypeError(f"{body!r} is not a byte")
        data = self._framed(body)
        if self.chunked:
            data += b"0\r\n\r\n"
        self._send(data)

    def finish(self) -> None:
        self._send(b"0\r\n\r\n" if self.chunked else b"")
