"""The leanest gevent HTTP/1.1 server we could write: BENCHMARK CODE ONLY, for bench/floor.py.

``--workers`` forked processes, each with its own ``SO_REUSEPORT`` socket; one greenlet per
keep-alive connection, a request head split on CRLF, a WSGI environ from a template, one
``sendall`` per answer. No limits, no timeouts, no request bodies, no chunked encoding, no
logging: what any gevent server must at least spend per request on this machine, so that what an
app adds on top of it can be read off (``--app``):

* ``fixed``: no app, a prebuilt ``{"echo": "hello"}`` answer (the server's own floor);
* ``flask``: bench/baselines/flask_a.py, the bare Flask app of the comparison baseline;
* ``a``: the project's Service A app, ``service_a.app:create_app()``, every feature on.

    python bench/baselines/floor_server.py --app flask --port 18080 --workers 2
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
FIXED_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n"
                b'{"echo": "hello"}\n')


def split_heads(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The complete request heads at the start of ``buffer`` (no bodies: GET only), and the rest."""
    heads = buffer.split(b"\r\n\r\n")
    return heads[:-1], heads[-1]


def environ_for(head: bytes, template: dict[str, Any]) -> dict[str, Any]:
    """A WSGI environ for one request head: method, path, query and every header as ``HTTP_*``."""
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, target, protocol = request_line.split(" ", 2)
    path, _, query = target.partition("?")
    environ = dict(template)
    environ.update(REQUEST_METHOD=method, PATH_INFO=path, QUERY_STRING=query, SERVER_PROTOCOL=protocol)
    for line in header_lines:
        name, _, value = line.partition(":")
        key = name.strip().upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value.strip()
        else:
            environ["HTTP_" + key] = value.strip()
    return environ


def answer(app: WSGIApp, environ: dict[str, Any]) -> bytes:
    """Call ``app`` as a server does and return the whole HTTP/1.1 answer."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        started.append((status, headers))

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started[-1]
    lines = [f"HTTP/1.1 {status}"] + [f"{name}: {value}" for name, value in headers]
    if not any(name.lower() == "content-length" for name, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def load_app(name: str) -> WSGIApp | None:
    """The app ``--app`` names; None for ``fixed``."""
    here = Path(__file__).resolve().parent
    if name == "fixed":
        return None
    if name == "flask":
        sys.path.insert(0, str(here))
        from flask_a import app as flask_app

        bare: WSGIApp = flask_app
        return bare
    sys.path.insert(0, str(here.parent.parent))
    from service_a.app import create_app

    return create_app()


def serve(app: WSGIApp | None, port: int, workers: int) -> None:
    """Serve ``app`` (None: the fixed answer) on 127.0.0.1:``port`` until killed (monkey-patched already)."""
    import gevent
    import gevent.socket
    from gevent.server import StreamServer

    template = {
        "SCRIPT_NAME": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": str(port), "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0", "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }

    def handle(sock: Any, address: Any) -> None:
        pending = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return
            heads, pending = split_heads(pending + data)
            for head in heads:
                sock.sendall(FIXED_ANSWER if app is None else answer(app, environ_for(head, template)))
            gevent.sleep(0)  # as the project's worker: a client with requests queued does not starve others

    for _ in range(workers - 1):
        if os.fork() == 0:  # gevent's fork: the child's loop is reinitialised
            break
    # One socket per process on the same port, as the project's gunicorn.conf.py (reuse_port): the
    # kernel spreads connections evenly, where one shared socket lets one process take most of them.
    listener = gevent.socket.socket()
    listener.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEADDR, 1)
    listener.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    StreamServer(listener, handle).serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=("fixed", "flask", "a"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="processes serving the one socket")
    args = parser.parse_args(argv)
    from gevent import monkey

    monkey.patch_all()  # before the app is imported, as under gunicorn's gevent worker
    serve(load_app(args.app), args.port, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
