"""gunicorn's gevent worker, with draining on SIGTERM and the HTTP/1.1 of :mod:`echokit.servers.http11`.

gevent because B spends its time waiting on A: each request is a cheap greenlet, so 200 calls
hanging on a frozen A cost 200 greenlets, not 200 threads, and ``/health`` keeps answering.
gunicorn stays the process manager (master, workers, signals, hooks, reuse_port); each worker's
connections are served by :meth:`GracefulGeventWorker.handle`, which parses with httptools and
writes each answer in one send instead of gunicorn's pure-Python parser and response writer
(~90 µs of CPU per request, a 503 shed under overload included).
"""

from __future__ import annotations

import contextlib
import errno
import select
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from types import FrameType, TracebackType
from typing import Any

import gevent
import gevent.monkey
from gunicorn import util
from gunicorn.http.wsgi import FileWrapper, WSGIErrorsWrapper
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

from echokit import logs
from echokit.context import ARRIVAL_ENVIRON
from echokit.lifecycle import Lifecycle
from echokit.servers import http11
from echokit.servers.gunicorn_patches import write_json_error

# How long a keep-alive connection must stay idle after the worker stops accepting before it is closed.
IDLE_CLOSE_GRACE_S = 0.5

_original_poll = gevent.monkey.get_original("select", "poll")  # never yields: asked from the hub itself


def _has_unread_input(sock: Any) -> bool:
    """Whether bytes (or the client's close) wait on ``sock`` that its greenlet has not read yet."""
    try:
        poller = _original_poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # a socket already closed: nothing will be read from it
        return False


class _KeepAliveOver(BaseException):
    """Thrown into a connection's greenlet when its wait for a next request is over (a BaseException,
    as ``gevent.Timeout`` is, so that no ``except Exception`` on the way swallows it)."""


class _NextRequestWait:
    """gunicorn's keep-alive wait for a connection's next request (silent: the connection just
    closes), which a stopping worker can end at once: an idle keep-alive connection (B keeps a pool
    of them to A) is not a request in flight and should not hold the shutdown for up to ``keepalive``
    seconds.

    A request already waiting when the time runs out is read, not dropped: libev runs an iteration's
    expired timers before its readable sockets, so on a busy worker (or by a few ms of its cached
    clock) a client's next request sent just before the keep-alive ran out met a close with unread
    input, a TCP reset (a ``requests.Session`` reusing a connection after 4.996-5.005 s idle: 11
    resets in 30 before this check, 2 after; those two are the race no server can close, a request
    sent as the close is on its way). ``sock``: the connection to check; that time is given once
    per wait, then the wait ends in any case.

    ``reusable``: one per connection, entered once per request. Its libev timer is armed with
    ``again()``, which restarts it with the full time. A new ``gevent.Timeout`` per request cost
    about 8 µs of a loaded worker's ~120 per request (docs/performance-comparison.md, section 2),
    and a stopped one-shot timer started again resumes with the time it had left, which cut
    connections early. The timer is a repeating one only so that ``again()`` re-arms it; every exit
    stops it. Whoever made a reusable one calls :meth:`close` when the connection ends.
    """

    def __init__(
        self, worker: GracefulGeventWorker, seconds: float, idle: bool, reusable: bool = False, sock: Any = None
    ) -> None:
        self.worker = worker
        self.over = _KeepAliveOver()
        self.timer = gevent.get_hub().loop.timer(seconds, seconds)
        self.idle = idle  # False while waiting for a connection's first request: that one is kept
        self.reusable = reusable
        self.sock = sock
        self.extended = False
        self.greenlet: Any = None

    def __enter__(self) -> _NextRequestWait:
        self.greenlet = gevent.getcurrent()
        self.extended = False
        self.timer.again(self._ran_out)
        if self.idle:
            self.worker._idle_waits[self] = None  # last: the dict's order is oldest idle first
            if not self.worker.alive:
                # Stopping already: _stop_accepting ran while this connection was still answering its last
                # request (SIGTERM right after the client read it), so it did not see this wait.
                gevent.spawn_later(IDLE_CLOSE_GRACE_S, self.end_if_still_idle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> bool:
        self.worker._idle_waits.pop(self, None)
        self.timer.stop()
        if not self.reusable:
            self.timer.close()
        return value is self.over  # our own: no next request, so the connection closes

    def _ran_out(self) -> None:
        if self.idle and self.sock is not None and not self.extended and _has_unread_input(self.sock):
            self.extended = True
            return  # the repeating timer fires once more, a full wait later, if the request has not come by then
        self.greenlet.throw(self.over)

    def close(self) -> None:
        self.timer.close()

    def end_if_still_idle(self) -> bool:
        """Close the connection unless it is no longer idle (a request arrived); whether it was closed."""
        if self in self.worker._idle_waits and isinstance(self.greenlet, gevent.Greenlet):
            del self.worker._idle_waits[self]  # once: a second call before the greenlet ends does nothing
            self.timer.stop()
            self.greenlet.kill(self.over, block=False)
            return True
        return False


# --- arrival time: budgets count from when the server read the request, not from when the handler ran ---

_arrival: ContextVar[float | None] = ContextVar("echokit_arrival", default=None)
_MAX_QUEUE_S = 60.0  # a clock step can make the estimate absurd; never claim more queueing than this


def arrival_time() -> float:
    """When the current request was read, as ``time.monotonic()``: the time gevent's loop last polled.

    A greenlet woken because its socket became readable runs in the loop iteration that saw it, and
    libev keeps that iteration's time (wall clock) in ``loop.now()`` until the next poll; on a busy
    worker the greenlets woken late in an iteration have waited that long for the CPU already.
    """
    waited = time.time() - float(gevent.get_hub().loop.now())
    return time.monotonic() - min(_MAX_QUEUE_S, max(0.0, waited))


class _StampArrival:
    """A WSGI app with the request's arrival time put in its environ (``ARRIVAL_ENVIRON``): for
    gunicorn's own connection handling (TLS, HTTP/2, PROXY protocol); :mod:`echokit.servers.http11`
    puts it in the environ it builds."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        arrived = _arrival.get()
        if arrived is not None:
            environ[ARRIVAL_ENVIRON] = arrived
        return self.app(environ, start_response)


# How many connections a worker accepts per turn of its event loop. gunicorn sets 1 when several
# workers share one listening socket, so that one worker does not take them all; with reuse_port
# (gunicorn.conf.py) each worker has its own socket, and accepting one connection per loop turn left
# new connections waiting seconds for accept() while the loop served hundreds of others.
ACCEPT_PER_TURN = 64


# How many idle keep-alive connections a worker whose connections are all taken closes at a time,
# to make room for connections waiting to be accepted (nginx closes up to 32 the same way).
RELEASE_PER_TURN = 32


class _ReleasingStreamServer(ggevent.StreamServer):  # type: ignore[misc]
    """gevent's StreamServer that, with all ``WORKER_CONNECTIONS`` taken, closes the longest-idle
    keep-alive connections instead of leaving new connections in the accept queue.

    gevent stops accepting while the worker's pool is full and starts again when a connection ends.
    Idle keep-alive connections (a client's pool, between its requests) hold their place for up to
    ``keepalive`` seconds, so a new client could wait that long before its request was even read
    (seen: 5.4 s under an open-loop flood of new connections). Closing an idle keep-alive
    connection is always allowed to a server (RFC 9112 9.8); the oldest are the least likely to be
    in use, and busy connections are never touched.
    """

    release_idle: Callable[[int], int] | None = None  # the worker's, set in its run(): one worker per process

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting_watcher: Any = None
        self._pool_full: Callable[[], bool] = self.full  # type: ignore[has-type]  # the pool's, set on the instance
        self.full = self._full_or_make_room

    def _full_or_make_room(self) -> bool:
        """The pool's ``full()``; when full, the listening socket is watched for a waiting connection."""
        if not self._pool_full():
            return False
        # gevent stops watching the socket now; this watches it for the next connection instead.
        if self.release_idle is not None and self._waiting_watcher is None:
            self._waiting_watcher = self.loop.io(self.socket.fileno(), 1)
            self._waiting_watcher.start(self._connection_waiting)
        return True

    def _connection_waiting(self) -> None:
        """A connection waits to be accepted: if every place is still taken, free the longest-idle ones."""
        self._stop_waiting_watcher()
        if self._pool_full() and self.release_idle is not None:
            self.release_idle(RELEASE_PER_TURN)  # their greenlets end, the pool frees, accepting resumes

    def _stop_waiting_watcher(self) -> None:
        if self._waiting_watcher is not None:
            self._waiting_watcher.stop()
            self._waiting_watcher.close()
            self._waiting_watcher = None

    def close(self) -> None:
        self._stop_waiting_watcher()
        super().close()


class _OwnSocketStreamServer(_ReleasingStreamServer):
    """The server for a worker with its own listening socket (reuse_port): up to ACCEPT_PER_TURN
    connections accepted per loop turn, whatever gunicorn sets."""

    @property
    def max_accept(self) -> int:
        return ACCEPT_PER_TURN

    @max_accept.setter
    def max_accept(self, value: int) -> None:
        pass  # gunicorn's shared-socket setting; this worker's socket is its own


class GracefulGeventWorker(GeventWorker):  # type: ignore[misc]
    """On SIGTERM: /ready turns 503, serving goes on for the drain delay, then the worker stops
    accepting, closes idle keep-alive connections, and gunicorn waits for in-flight requests
    (``graceful_timeout``)."""

    alive: bool  # gunicorn's: False once the worker stops (or has served max_requests)
    nr: int
    max_requests: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle_waits: dict[_NextRequestWait, None] = {}  # an ordered set: oldest idle first
        self._connections_seen: weakref.WeakSet[Any] = weakref.WeakSet()
        self._http: http11.ServerConfig | None = None  # set once the app is loaded, unless gunicorn serves

    def _gunicorn_serves(self) -> bool:
        """What :mod:`echokit.servers.http11` does not do goes to gunicorn's own code, unchanged: TLS,
        HTTP/2, the PROXY protocol, uWSGI, and per-request hooks (``pre_request``/``post_request``)."""
        cfg = self.cfg
        hooks = ("pre_request", "post_request")
        return bool(
            cfg.is_ssl or "h2" in getattr(cfg, "http_protocols", ()) or getattr(cfg, "proxy_protocol", "off") != "off"
            or getattr(cfg, "protocol", "http") != "http"
            or any(cfg.settings[hook].value is not cfg.settings[hook].default for hook in hooks)
        )

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        """Serve one connection: requests parsed by httptools, each answered in one send (http11)."""
        config = self._http
        if config is None:
            super().handle(listener, client, addr)
            return
        client.setblocking(1)  # gevent's socket: "blocking" yields to the loop
        keepalive = self.cfg.keepalive
        # How long a client may take to send a request's head; after the first, the keep-alive wait.
        wait = _NextRequestWait(self, keepalive, False, reusable=True, sock=client) if keepalive else None
        try:
            self._serve_connection(http11.Connection(client, addr, listener.getsockname(), config), wait)
        except http11.HTTPError as exc:  # refused before the app ran: gunicorn's warning, a JSON answer
            self.log.warning("Invalid request from ip=%s: %s", addr[0] if isinstance(addr, tuple) else addr, exc)
            with contextlib.suppress(OSError):
                write_json_error(client, exc.status, exc.reason, exc.details)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            else:
                self.log.debug("Ignoring client disconnection: %s", exc)
        except (gevent.GreenletExit, SystemExit):
            pass  # the worker is stopping (graceful timeout over): as gunicorn's gevent worker
        except Exception:
            self.log.exception("Error handling request (no URI read)")
            with contextlib.suppress(OSError):
                write_json_error(client, 500, "Internal Server Error", "")
        finally:
            if wait is not None:
                wait.close()
            util.close(client)

    def _serve_connection(self, conn: http11.Connection, wait: _NextRequestWait | None) -> None:
        """Its requests, one after the other, each awaited within ``wait`` (None: no time limit)."""
        while True:
            if wait is None:
                request = conn.next_request()
            else:
                request = None
                with wait:
                    request = conn.next_request()
                wait.idle = True
            if request is None or not self._serve(conn, request):
                return

    def _serve(self, conn: http11.Connection, request: http11.Request) -> bool:
        """One request, then let other connections' greenlets run; whether the connection stays open.

        gevent only switches when a call would block, so without the sleep(0) a keep-alive client whose
        next request is already buffered is served again and again before anyone else: the
        benchmark measured p99 at 16 connections falling from 150-217 ms to 15-57 ms with it.
        """
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        request.environ[ARRIVAL_ENVIRON] = arrival_time()
        try:
            # Once the worker stops, each answer says "Connection: close" (as gunicorn's).
            return conn.respond(request, self.wsgi, must_close=not self.alive)
        finally:
            gevent.sleep(0)

    def timeout_ctx(self) -> _NextRequestWait:
        """gunicorn's own path (see :meth:`_gunicorn_serves`) asks for its keep-alive wait here."""
        current = gevent.getcurrent()
        idle = current in self._connections_seen  # a later wait on the same connection's greenlet
        self._connections_seen.add(current)
        return _NextRequestWait(self, self.cfg.keepalive, idle)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> None:
        """gunicorn's own path (see :meth:`_gunicorn_serves`): one request, then let other greenlets run."""
        token = _arrival.set(arrival_time())
        try:
            super().handle_request(listener_name, req, sock, addr)
        finally:
            _arrival.reset(token)
            gevent.sleep(0)

    def run(self) -> None:
        _ReleasingStreamServer.release_idle = self._release_idle
        # The module gunicorn's run() builds its servers from.
        ggevent.StreamServer = _OwnSocketStreamServer if self.cfg.reuse_port else _ReleasingStreamServer
        logs.batch_writes(gevent.get_hub().loop.run_callback)  # one log write per turn of the loop
        try:
            super().run()
        finally:
            logs.flush_writes()

    def _release_idle(self, count: int) -> int:
        """Close up to ``count`` of the connections idle longest between requests; how many."""
        released = 0
        for wait in list(self._idle_waits)[:count]:
            if wait.end_if_still_idle():
                released += 1
        if released:
            self.log.debug("all %d connections taken: closed %d idle keep-alive connection(s)",
                           self.worker_connections, released)
        return released

    def load_wsgi(self) -> None:
        """Load the app, and find its lifecycle now: an app without one fails the boot, loudly."""
        super().load_wsgi()
        # Imported here, in the worker: the master imports this module too (to find the worker
        # class) and should not pay for Flask and prometheus_client, which it never uses.
        from echokit.extension import echokit_of

        self.lifecycle: Lifecycle = echokit_of(self.wsgi).lifecycle
        if self._gunicorn_serves():
            # Inside the Flask app, so the app stays the object served (and found by echokit_of).
            self.wsgi.wsgi_app = _StampArrival(self.wsgi.wsgi_app)
        else:
            self.serve_http11()

    def serve_http11(self) -> None:
        """Serve this worker's connections with :mod:`echokit.servers.http11` (``self.wsgi`` is the app)."""
        self._http = http11.ServerConfig(self.cfg, self.log, WSGIErrorsWrapper(self.cfg), FileWrapper)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        lifecycle: Lifecycle | None = getattr(self, "lifecycle", None)  # None: SIGTERM before the app loaded
        if lifecycle is None or not lifecycle.begin_drain() or lifecycle.drain_delay_s <= 0:
            self._stop_accepting()
            return
        self.log.info("draining: /ready answers 503 for %.1fs before the listener closes", lifecycle.drain_delay_s)
        gevent.spawn_later(lifecycle.drain_delay_s, self._stop_accepting)

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        # SIGINT/SIGQUIT (Ctrl+C in a terminal reaches the workers too): stop at once, without the
        # drain delay. gunicorn's own handler calls sys.exit() inside a greenlet, which gevent
        # prints as a "failed with SystemExit" traceback on every Ctrl+C (benoitc/gunicorn#3239).
        self.cfg.worker_int(self)
        self._stop_accepting()

    def _stop_accepting(self) -> None:
        self.alive = False
        # A busy connection's next request is answered with "Connection: close" (gunicorn does that
        # once the worker is not alive). One that stays idle for IDLE_CLOSE_GRACE_S is closed then:
        # closing at once would race clients that are just sending on it (they would see a reset).
        for wait in list(self._idle_waits):
            gevent.spawn_later(IDLE_CLOSE_GRACE_S, wait.end_if_still_idle)
