"""B's own HTTP/1.1 transport for its calls to A: one keep-alive pool per endpoint, one GET at a time.

Why not urllib3: B sends one kind of request (``GET`` with three headers) and reads one kind of
answer (a small JSON body with ``Content-Length``). urllib3 and http.client under it spent ~400 µs
of CPU per call on generality (a header dict merged per call, a response object, ``email``-based
header parsing, a liveness ``poll()`` per reused connection); this module does the same job with a
request prefix precomputed per endpoint and a parser over the bytes of (usually) a single ``recv``.

Behaviour, and why:

* Pool: LIFO (the most recently used connection is the most likely still open), bounded, and
  never blocking: when every pooled connection is busy a fresh one is opened and closed after use.
  The bulkhead already bounds concurrency; queueing here would only add waiting.
* Timeouts: connecting is bounded by the caller's connect timeout, every write and read by what
  is left of the call's deadline (measured in real time from the start of the request).
* Stale keep-alive: a reused connection that A closed while idle (its keep-alive timeout) fails
  before any response byte arrives; that request is sent again at once on a fresh connection,
  once. GET is idempotent and A saw nothing on a closed connection. This replaces urllib3's
  ``poll()`` of every reused connection: it costs nothing while connections are good.
* Strict parser: ``HTTP/1.x`` status line, CRLF-only header lines, no obsolete line folding,
  one consistent ``Content-Length`` (or ``Transfer-Encoding: chunked``, decoded strictly; both
  at once is refused), head and body size caps. Anything else is :class:`ResponseError`, which
  the client reports as a 502 bad response. ``Connection: close`` (or HTTP/1.0 without
  keep-alive, or a body delimited by the close) means the connection is not reused.
* :class:`AttemptTrace` (hedged attempts only): which connection an attempt uses, so a hedge
  that lost the race can shut it down; a connection of an abandoned attempt is never pooled.

HTTP only: B's settings accept no https URL for A.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from time import monotonic

# A's answers are ~200 bytes of head and a body no larger than the echoed msg (bounded by the
# request-line limit); these caps only stop a broken or hostile peer from using B's memory.
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
RECV_BYTES = 64 * 1024
NO_BODY_STATUSES = frozenset({204, 304})
# RFC 9110 token characters: a header name made of anything else is refused.
_TCHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class TransportError(Exception):
    """No usable HTTP response. ``sent``: the request was completely written before it failed."""

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class NewConnectionError(TransportError):
    """Connecting failed (refused, unreachable): nothing reached A."""


class ConnectTimeoutError(TransportError):
    """Connecting took longer than the connect timeout."""


class ReadTimeoutError(TransportError):
    """The deadline passed while writing the request or waiting for the response."""


class ProtocolError(TransportError):
    """The connection broke (reset, closed, shut down) before the whole response arrived."""


class ResponseError(TransportError):
    """A's bytes are not a valid HTTP/1.1 response, or exceed the size caps."""

    def __init__(self, message: str) -> None:
        super().__init__(message, sent=True)


class _StaleConnectionError(Exception):
    """A reused connection turned out closed before any response byte: send again, fresh."""


class Connection:
    """One socket to an endpoint; ``sock`` is None once closed; ``reused``: it served a request before."""

    __slots__ = ("reused", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock
        self.reused = False

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


class AttemptTrace:
    """What one hedged attempt's connection is doing, so a hedge that lost the race can drop it.

    ``sent`` says whether the request was completely written (a retry may then go at once only
    if it was not). ``finish()`` ends the attempt's hold on the connection before it goes back to
    the pool, so ``abandon()`` can never shut down a connection another call may take next.
    """

    __slots__ = ("_lock", "abandoned", "conn", "finished", "sent")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.sent = False
        self.abandoned = False
        self.finished = False
        self._lock = threading.Lock()

    def attach(self, conn: Connection) -> None:
        """``conn`` carries this attempt from now on; raises if the attempt was abandoned already."""
        with self._lock:
            self.conn = conn
            if self.abandoned:
                raise ProtocolError("attempt abandoned: another attempt answered first")

    def finish(self) -> bool:
        """The answer is in: from now on ``abandon`` leaves the connection alone. True if the
        attempt was abandoned meanwhile (its connection must then be closed, not reused)."""
        with self._lock:
            self.finished = True
            return self.abandoned

    def abandon(self) -> None:
        """Drop this attempt's connection (it lost a hedge race): its blocked read fails at once."""
        with self._lock:
            self.abandoned = True
            if self.finished:
                return
            sock = self.conn.sock if self.conn is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked reader; the connection is then closed


class IdleConnections:
    """The pool's idle connections, most recently used last. Named as urllib3 names its pool's
    queue (``pool.pool.queue``) so code that inspects idle connections reads the same attribute."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: list[Connection] = []


class ConnectionPool:
    """Keep-alive connections to one endpoint and the one request B sends over them."""

    def __init__(self, ip: str, port: int, maxsize: int, host_header: str, base_path: str) -> None:
        self.address = (ip, port)
        self.family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.maxsize = maxsize
        self.pool = IdleConnections()
        # list append/pop are atomic: no lock on the hot path (racing returns may pass maxsize by one
        # or two for a moment; the bulkhead bounds connections in use anyway).
        self._idle = self.pool.queue
        self._closed = False
        self._prefix = b"GET " + base_path.encode("ascii")
        self._head = b" HTTP/1.1\r\nHost: " + host_header.encode("ascii") + b"\r\nAccept-Encoding: identity\r\n"

    def close(self) -> None:
        """Close the idle connections; connections in use are closed when they come back."""
        self._closed = True
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:
                break

    def request(
        self, target: str, headers: bytes, connect_timeout_s: float, timeout_s: float,
        trace: AttemptTrace | None = None,
    ) -> tuple[int, bytes]:
        """``GET <base path><target>`` with ``headers`` (complete ``Name: value\\r\\n`` lines); the
        status and body. Connecting takes at most ``connect_timeout_s``, the whole request at most
        ``timeout_s``. Raises a :class:`TransportError`."""
        expires = monotonic() + timeout_s
        data = b"".join((self._prefix, target.encode("ascii"), self._head, headers, b"\r\n"))
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._connect(connect_timeout_s)
        try:
            try:
                status, body, keep = self._exchange(conn, data, expires, trace)
            except _StaleConnectionError:
                conn.close()
                conn = self._connect(min(connect_timeout_s, max(0.0, expires - monotonic())))
                status, body, keep = self._exchange(conn, data, expires, trace)
        except BaseException:
            conn.close()
            raise
        if trace is not None and trace.finish():
            keep = False  # lost a hedge race meanwhile: dropped, never reused
        if keep and not self._closed and len(self._idle) < self.maxsize:
            conn.reused = True
            self._idle.append(conn)
        else:
            conn.close()
        return status, body

    def _connect(self, timeout_s: float) -> Connection:
        if timeout_s <= 0:  # a zero timeout would make connect() non-blocking, not instant failure
            raise ConnectTimeoutError("no time left to connect")
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM)  # may fail too: out of file descriptors
        except OSError as exc:
            raise NewConnectionError(f"Failed to establish a new connection: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout_s)
            sock.connect(self.address)
        except TimeoutError:
            sock.close()
            raise ConnectTimeoutError(f"Connection timed out (connect timeout={timeout_s:.3g}s)") from None
        except OSError as exc:
            sock.close()
            raise NewConnectionError(f"Failed to establish a new connection: {exc}") from None
        return Connection(sock)

    def _exchange(
        self, conn: Connection, data: bytes, expires: float, trace: AttemptTrace | None
    ) -> tuple[int, bytes, bool]:
        sock = conn.sock
        if sock is None:
            raise ProtocolError("connection closed")
        if trace is not None:
            trace.attach(conn)
        left = expires - monotonic()
        if left <= 0:
            raise ReadTimeoutError("no time left to send the request")
        try:
            sock.settimeout(left)
            # One send() nearly always takes the whole (small) request; gevent's sendall() costs
            # ~6 µs more per call in bookkeeping, so it only finishes what send() left.
            written = sock.send(data)
            if written < len(data):
                sock.sendall(memoryview(data)[written:])
        except TimeoutError:
            raise ReadTimeoutError("timed out sending the request") from None
        except OSError as exc:
            if conn.reused and not _abandoned(trace):
                raise _StaleConnectionError from None
            raise ProtocolError(str(exc)) from None
        if trace is not None:
            trace.sent = True
        reader = _Reader(sock, expires)
        try:
            first = reader.recv()
        except ProtocolError:
            if conn.reused and not _abandoned(trace):
                raise _StaleConnectionError from None
            raise
        if not first:
            if conn.reused and not _abandoned(trace):
                raise _StaleConnectionError
            raise ProtocolError("Remote end closed connection without response", sent=True)
        return reader.response(first)


def _abandoned(trace: AttemptTrace | None) -> bool:
    return trace is not None and trace.abandoned


class _Reader:
    """Reads and parses one response from ``sock`` by ``expires`` (monotonic seconds)."""

    __slots__ = ("expires", "sock")

    def __init__(self, sock: socket.socket, expires: float) -> None:
        self.sock = sock
        self.expires = expires

    def recv(self, first: bool = True) -> bytes:
        if not first:
            left = self.expires - monotonic()
            if left <= 0:
                raise ReadTimeoutError("read timed out", sent=True)
            self.sock.settimeout(left)
        try:
            return self.sock.recv(RECV_BYTES)
        except TimeoutError:
            raise ReadTimeoutError("read timed out", sent=True) from None
        except OSError as exc:
            raise ProtocolError(str(exc), sent=True) from None

    def more(self, buf: bytes, cap: int) -> bytes:
        """``buf`` plus the next bytes; a close here breaks the response."""
        chunk = self.recv(first=False)
        if not chunk:
            raise ProtocolError("Connection closed in the middle of the response", sent=True)
        buf += chunk
        if len(buf) > cap:
            raise ResponseError(f"Service A's response is larger than {cap} bytes")
        return buf

    def response(self, buf: bytes) -> tuple[int, bytes, bool]:
        """(status, body, keep-alive) of the response whose first bytes are ``buf``."""
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            buf = self.more(buf, MAX_HEAD_BYTES)
            end = buf.find(b"\r\n\r\n")
        if end > MAX_HEAD_BYTES:
            raise ResponseError(f"Service A's response head is larger than {MAX_HEAD_BYTES} bytes")
        head = buf[:end]
        rest = buf[end + 4:]
        status, keep, length, chunked = _parse_head(head)
        if status in NO_BODY_STATUSES:
            return status, b"", keep and not rest
        if chunked:
            body, rest = self._chunked(rest)
        elif length is not None:
            if length > MAX_BODY_BYTES:
                raise ResponseError(f"Service A's body is larger than {MAX_BODY_BYTES} bytes")
            while len(rest) < length:
                rest = self.more(rest, length)
            body, rest = rest[:length], rest[length:]
        else:  # delimited by the end of the connection (HTTP/1.0 style): never reused
            while True:
                chunk = self.recv(first=False)
                if not chunk:
                    return status, rest, False
                rest += chunk
                if len(rest) > MAX_BODY_BYTES:
                    raise ResponseError(f"Service A's body is larger than {MAX_BODY_BYTES} bytes")
        # Bytes beyond the response were never asked for (B does not pipeline): do not reuse.
        return status, body, keep and not rest

    def _chunked(self, buf: bytes) -> tuple[bytes, bytes]:
        """The decoded body and what follows it, from chunked bytes starting at ``buf``."""
        parts: list[bytes] = []
        size_total = 0
        while True:
            line_end = buf.find(b"\r\n")
            while line_end < 0:
                if len(buf) > 1024:
                    raise ResponseError("Service A's chunk size line is too long")
                buf = self.more(buf, MAX_BODY_BYTES)
                line_end = buf.find(b"\r\n")
            size_text = buf[:line_end].split(b";", 1)[0].strip()
            if not size_text or len(size_text) > 8 or size_text.strip(b"0123456789abcdefABCDEF"):
                raise ResponseError("Service A's chunk size is not hexadecimal")
            size = int(size_text, 16)
            buf = buf[line_end + 2:]
            if size == 0:
                break
            size_total += size
            if size_total > MAX_BODY_BYTES:
                raise ResponseError(f"Service A's body is larger than {MAX_BODY_BYTES} bytes")
            while len(buf) < size + 2:
                buf = self.more(buf, MAX_BODY_BYTES + 1024)
            if buf[size:size + 2] != b"\r\n":
                raise ResponseError("Service A's chunk does not end with CRLF")
            parts.append(buf[:size])
            buf = buf[size + 2:]
        # Trailer fields (ignored) up to the empty line.
        end = buf.find(b"\r\n") if buf.startswith(b"\r\n") else buf.find(b"\r\n\r\n")
        while end < 0:
            buf = self.more(buf, MAX_HEAD_BYTES)
            end = buf.find(b"\r\n") if buf.startswith(b"\r\n") else buf.find(b"\r\n\r\n")
        tail = buf[2:] if buf.startswith(b"\r\n") else buf[end + 4:]
        return b"".join(parts), tail


def _parse_status_line(line: bytes) -> tuple[int, bool]:
    """(status, keep-alive by default) of ``HTTP/1.x NNN reason``."""
    if (
        len(line) < 12 or line[:7] != b"HTTP/1." or line[7] not in b"01" or line[8] != 32
        or not line[9:12].isdigit() or (len(line) > 12 and line[12] != 32)
    ):
        raise ResponseError(f"Service A's status line is not HTTP/1.x: {line[:80]!r}")
    status = int(line[9:12])
    if status < 200:  # B never sends Expect, and A has no reason to switch protocols
        raise ResponseError(f"Service A answered an unexpected interim status {status}")
    return status, line[7] == 49  # HTTP/1.1 keeps the connection unless told otherwise


def _parse_head(head: bytes) -> tuple[int, bool, int | None, bool]:
    """(status, keep-alive, Content-Length or None, chunked) of a response head (no final CRLFCRLF)."""
    # Bare CR or LF anywhere would let two parsers disagree about where a header ends.
    if head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\r\n"):
        raise ResponseError("Service A's response has a bare CR or LF in its head")
    lines = head.split(b"\r\n")
    status, keep = _parse_status_line(lines[0])
    length: int | None = None
    chunked = False
    for field in lines[1:]:
        name, colon, value = field.partition(b":")
        if not colon or not name or name.translate(None, _TCHARS):  # also obs-fold and "Name :"
            raise ResponseError(f"Service A's response has a malformed header line: {field[:80]!r}")
        name = name.lower()
        if name == b"content-length":
            text = value.strip(b" \t")
            if not text.isdigit() or (length is not None and int(text) != length):
                raise ResponseError(f"Service A's Content-Length is invalid: {value[:40]!r}")
            length = int(text)
        elif name == b"transfer-encoding":
            if value.strip(b" \t").lower() != b"chunked":
                raise ResponseError(f"Service A's Transfer-Encoding is not supported: {value[:40]!r}")
            chunked = True
        elif name == b"connection":
            tokens = [t.strip(b" \t") for t in value.lower().split(b",")]
            if b"close" in tokens:
                keep = False
            elif b"keep-alive" in tokens:
                keep = True
    if chunked and length is not None:
        raise ResponseError("Service A's response has both Content-Length and Transfer-Encoding")
    return status, keep, length, chunked
