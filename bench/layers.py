"""What each layer of Service B costs per ``/call-echo`` request, as a markdown table (issue 13).

    python -m bench.layers              # in-process CPU per layer (~1.5 min on a busy machine)
    python -m bench.layers --py-spy     # also: py-spy samples one B worker under wrk load
    python -m bench.layers --quick      # fewer repetitions, 2 s of load: a smoke run (~30 s)

Every figure is microseconds of this process's CPU (user + system) per operation, the median of
5 repetitions (bench/micro.py's ``cpu_us``), measured with the project's own code: the server
(echokit.servers.http11's parser, environ and response writer; gunicorn's, which it replaced, as
"replaced" rows), Flask (B's app with a stub client and no middleware),
the middleware (request id, metrics, access log), the upstream call against a real Service A
under gunicorn (echokit's own transport: pool checkout, request, response parsing; http.client
alone as a reference) and the resilience wrappers. Then B's
whole per-request CPU under load (gunicorn, one worker, wrk -c16) gives the remainder no
in-process figure covers: the gevent hub, socket syscalls, scheduling.

``--py-spy`` samples that B worker with py-spy (``py-spy record --format raw --nonblocking``)
while wrk loads it, and prints the share of non-idle samples that have a frame in each part
(inclusive: a transport frame under an upstream client frame counts for both). JSON: bench/results/layers.json;
py-spy's raw stacks: bench/results/layers-pyspy.tmp (git-ignored).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench import micro  # cpu_us; sets PROMETHEUS_MULTIPROC_DIR as gunicorn does
from bench import run as bench  # wrk and /proc statistics
from bench.apps import StubClient
from tests.support.harness import ServiceProcess, group_pids, start_service

REPO = Path(__file__).resolve().parent.parent


CALL = b"GET /call-echo?msg=hello HTTP/1.1\r\nHost: 127.0.0.1:8081\r\nUser-Agent: wrk\r\n\r\n"
# --py-spy, inclusive: (part, file name prefixes): a sample counts when any frame's file starts with one
PROFILE_INCLUSIVE = (
    ("server worker: everything it runs (request parsing, the app, response writing)",
     ("gunicorn/", "echokit/servers/")),
    ("Flask + Werkzeug: everything under them (the app)", ("flask/", "werkzeug/")),
    ("echokit upstream client: all of B's call to A", ("echokit/upstream",)),
    ("echokit transport: pool, request, response parsing (incl. sockets under it)", ("echokit/upstream/transport.py",)),
    ("logging: stdlib logging + echokit.logs (access + outbound lines)", ("logging/", "echokit/logs.py")),
    ("prometheus_client: metrics updates", ("prometheus_client/",)),
    # Not retry.py: run_with_retries wraps each whole attempt, so every upstream sample would count.
    ("echokit resilience: breaker, bulkhead, retry budget, deadline", tuple(
        f"echokit/resilience/{name}.py" for name in ("breaker", "bulkhead", "deadline", "window", "clock"))),
    ("json: encode + decode", ("json/",)),
)
# --py-spy, self: each sample goes to the package of its innermost frame
SELF_PACKAGES = (
    "gevent/", "gunicorn/", "flask/", "werkzeug/", "http/", "email/", "logging/", "prometheus_client/",
    "json/", "echokit/servers/", "echokit/", "service_b/", "socket.py", "threading.py", "urllib/",
)

Row = tuple[str, str, float]  # (layer, what, CPU microseconds per request)


class _NullSocket:
    def sendall(self, data: bytes) -> None:
        pass


def _wsgi_call(app: Any, path: str, query: str, sink: io.TextIOBase) -> None:
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(), "wsgi.errors": sink,
    }
    body: Iterable[bytes] = app(environ, lambda status, headers, exc_info=None: None)
    b"".join(body)
    getattr(body, "close", lambda: None)()


class _KeepAliveSocket:
    """A client that sends CALL again and again on one connection, and a sink for the answers."""

    def recv(self, size: int) -> bytes:
        return CALL

    def send(self, data: bytes) -> int:
        return len(data)

    def sendall(self, data: bytes) -> None:
        pass


def server_rows(n: int) -> list[Row]:
    """The worker's HTTP/1.1 (echokit.servers.http11): parse + environ, then the answer in one send; and
    gunicorn's own parser and Response, which it replaced, for comparison (not counted in the remainder)."""
    from gunicorn.config import Config
    from gunicorn.http.parser import RequestParser
    from gunicorn.http.wsgi import create

    from echokit.servers import http11

    cfg = Config()
    body = b'{"echo_response":{"echo":"hello"},"msg":"hello"}'
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               ("X-Request-ID", "0123456789abcdef0123456789abcdef")]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", list(headers))
        return [body]

    conn = http11.Connection(_KeepAliveSocket(), ("127.0.0.1", 1), ("127.0.0.1", 80),
                             http11.ServerConfig(cfg, logging.getLogger("bench.layers"), sys.stderr, None))

    def parse() -> None:
        conn.next_request()
        conn.ready.clear()

    def serve() -> None:
        request = conn.next_request()
        assert request is not None
        conn.respond(request, app, must_close=False)

    def respond() -> None:
        req = next(RequestParser(cfg, iter([CALL]), ("127.0.0.1", 1)))
        resp, _ = create(req, _NullSocket(), ("127.0.0.1", 1), ("127.0.0.1", 80), cfg)
        resp.start_response("200 OK", list(headers))
        resp.write(body)
        resp.close()

    ours = micro.cpu_us(parse, n)
    theirs = micro.cpu_us(lambda: next(RequestParser(cfg, iter([CALL]), ("127.0.0.1", 1))), n)
    return [
        ("server", "http11: parse the request (httptools, C) + build the WSGI environ", ours),
        ("server", "http11: status + headers + body in one send", micro.cpu_us(serve, n) - ours),
        ("replaced", "gunicorn's pure-Python parser (what http11 replaced)", theirs),
        ("replaced", "gunicorn's WSGI environ, status + headers, body write", micro.cpu_us(respond, n) - theirs),
    ]  # no access-line row: echokit.servers.gunicorn_config.AppAccessLogger makes gunicorn's access() a no-op


def app_rows(a_url: str, n: int, log_dir: Path) -> tuple[list[Row], float]:
    """Flask and the middleware around it, by difference; returns the rows and the whole app's cost."""
    from flask import Flask, Response

    from echokit.context import accept_request_id, current_request_id
    from echokit.extension import echokit_of
    from echokit.logs import access_logger
    from echokit.metrics import Metrics
    from echokit.settings import service_a_settings, service_b_settings
    from service_a.app import create_app as create_a
    from service_b.app import create_app

    os.environ["SERVICE_A_URL"] = a_url
    real_stderr = sys.stderr
    rows: list[Row] = []
    try:
        with open(log_dir / "layers-app.log", "w", encoding="utf-8") as sink:
            sys.stderr = sink  # the services' log handler binds sys.stderr when it is made
            bare = Flask("bare")
            prebuilt = b'{"echo_response":{"echo":"hello"},"msg":"hello"}'

            @bare.get("/call-echo")
            def call_echo() -> Response:
                return Response(prebuilt, mimetype="application/json")

            settings = service_b_settings()
            stubbed = create_app(settings, client=StubClient())  # type: ignore[arg-type]
            real = create_app(settings)
            inner = stubbed.wsgi_app.app  # type: ignore[attr-defined] # the Flask app inside ObservedApp
            access = access_logger(logging.getLogger("service_b"))  # what ObservedApp calls
            metrics = Metrics()

            def call(app: Any) -> Callable[[], None]:
                return lambda: _wsgi_call(app, "/call-echo", "msg=hello", sink)

            def request_id() -> None:
                token = current_request_id.set(accept_request_id(None))
                current_request_id.reset(token)

            def metric_updates() -> None:
                metrics.in_flight.inc()
                metrics.in_flight.dec()
                metrics.observe_request("GET", "/call-echo", 200, 0.0004)

            flask_only = micro.cpu_us(lambda: _wsgi_call(bare.wsgi_app, "/call-echo", "msg=hello", sink), n)
            app_inner = micro.cpu_us(lambda: _wsgi_call(inner, "/call-echo", "msg=hello", sink), n)
            app_observed = micro.cpu_us(call(stubbed), n)
            whole = micro.cpu_us(call(real), n)
            rows += [
                ("Flask", "Flask + Werkzeug: route, request, response objects (bare app, prebuilt body)", flask_only),
                ("Flask", "B's view on top: msg parsing, JSON body, admission gate (stub client)",
                 app_inner - flask_only),
                ("middleware", "all of ObservedApp (request id, metrics, access log, in-flight count)",
                 app_observed - app_inner),
                ("middleware", "  request id: new id + context variable set/reset", micro.cpu_us(request_id, n)),
                ("middleware", "  metrics: in-flight gauge inc/dec + request counter and histogram",
                 micro.cpu_us(metric_updates, n)),
                ("middleware", "  access log line (text format, INFO, to a file)", micro.cpu_us(
                    lambda: access("GET", "/call-echo", 200, 0.42, None), n)),
            ]
            a_app = create_a(service_a_settings())
            rows.append(("whole app", "A's WSGI app in-process: /echo, Flask + middleware", micro.cpu_us(
                lambda: _wsgi_call(a_app.wsgi_app, "/echo", "msg=hello", sink), n)))
            echokit_of(real).close()
    finally:
        sys.stderr = real_stderr
    return rows, whole


def upstream_rows(a_url: str, a_port: int, n: int, log_dir: Path) -> list[Row]:
    """B's call to A, piece by piece, against a real Service A."""
    from echokit.logs import configure_logging
    from echokit.resilience.bulkhead import Bulkhead
    from echokit.resilience.clock import SYSTEM_CLOCK
    from echokit.resilience.deadline import Deadline
    from echokit.resilience.retry import RetryBudget, RetryPolicy, run_with_retries
    from echokit.settings import service_b_settings
    from echokit.upstream import EchoClient
    from echokit.upstream.transport import ConnectionPool, _parse_head

    real_stderr = sys.stderr
    rows: list[Row] = []
    try:
        with open(log_dir / "layers-client.log", "w", encoding="utf-8") as sink:
            sys.stderr = sink
            logger = configure_logging("bench_layers_client", "INFO", "text")
            quiet = configure_logging("bench_layers_quiet", "WARNING", "text")
            client = EchoClient(service_b_settings({"SERVICE_A_URL": a_url}).upstream, logger=logger)
            client_quiet = EchoClient(service_b_settings({"SERVICE_A_URL": a_url}).upstream, logger=quiet)
            # A closes idle keep-alive connections after 5 s: these are opened just before they are timed.
            pool = ConnectionPool("127.0.0.1", a_port, 4, f"127.0.0.1:{a_port}", "")
            raw = http.client.HTTPConnection("127.0.0.1", a_port)

            def plain() -> None:
                raw.request("GET", "/echo?msg=hello", headers={"X-Request-Timeout-Ms": "2000"})
                raw.getresponse().read()

            def transport() -> None:
                pool.request("/echo?msg=hello", b"X-Request-Timeout-Ms: 2000\r\n", 0.5, 2.0)

            budget = RetryBudget(0.2, 3, 10.0, SYSTEM_CLOCK)
            policy = RetryPolicy(3, 0.025, 0.25)  # the RETRY_* defaults
            bulkhead = Bulkhead(256)
            breaker = client.breaker

            def retried() -> object:
                return run_with_retries(
                    lambda attempt: attempt, policy=policy, deadline=Deadline(2.0, SYSTEM_CLOCK), budget=budget,
                    is_retryable=lambda exc: False,
                )

            def breaker_pair() -> None:
                breaker.record_success(probe=breaker.before_call())

            def bulkhead_pair() -> None:
                bulkhead.try_enter()
                bulkhead.leave()

            def deadline() -> None:
                d = Deadline(2.0, SYSTEM_CLOCK)
                b"X-Request-Timeout-Ms: %d\r\n" % int(d.remaining() * 1000)

            def outbound_line() -> None:
                logger.info("outbound GET %s timeout=%.2fs attempt=%d -> 200 success in %.2fms",
                            client.echo_url, 1.99, 1, 0.42)

            whole = micro.cpu_us(lambda: client.echo("hello"), n)
            whole_quiet = micro.cpu_us(lambda: client_quiet.echo("hello"), n)
            raw.request("GET", "/echo?msg=hello")
            probe = raw.getresponse()
            probe.read()
            head = ("HTTP/1.1 200 OK\r\n" + "".join(f"{k}: {v}\r\n" for k, v in probe.getheaders())).encode()[:-2]
            keepalive = micro.cpu_us(plain, n)
            own_transport = micro.cpu_us(transport, n)
            rows += [
                ("upstream", "EchoClient.echo, whole (outbound log line at INFO)", whole),
                ("upstream", "  outbound log line (text format, INFO, to a file)", micro.cpu_us(outbound_line, n)),
                ("upstream", "  echokit transport: pool checkout, send request, read + parse response (keep-alive)",
                 own_transport),
                ("upstream", "    response head parsing (status line + headers of A's real answer)",
                 micro.cpu_us(lambda: _parse_head(head), n)),
                ("upstream", "  (reference) http.client alone, same request (keep-alive)", keepalive),
                ("upstream", "  JSON decode of A's body", micro.cpu_us(lambda: json.loads(b'{"echo":"hello"}'), n)),
                ("upstream", "  the client's own code (whole, quiet, minus the transport)",
                 whole_quiet - own_transport),
                ("resilience", "run_with_retries around a call that succeeds", micro.cpu_us(retried, n)),
                ("resilience", "circuit breaker: before_call + record_success", micro.cpu_us(breaker_pair, n)),
                ("resilience", "bulkhead: try_enter + leave", micro.cpu_us(bulkhead_pair, n)),
                ("resilience", "retry budget: record_call", micro.cpu_us(budget.record_call, n)),
                ("resilience", "deadline + X-Request-Timeout-Ms header line", micro.cpu_us(deadline, n)),
            ]
            rows += gevent_rows(n)
            for item in (client, client_quiet, pool, raw):
                item.close()
    finally:
        sys.stderr = real_stderr
    return rows


def gevent_rows(n: int) -> list[Row]:
    """What gevent's monkey-patching (the production worker) makes of two things the hot path does.

    The in-process rows above run unpatched; under gunicorn's gevent worker ``threading.local``
    and ``threading.Lock`` are gevent's, and both are dearer.
    """
    import threading

    import gevent.local
    import gevent.thread

    native, patched = threading.Lock(), gevent.thread.LockType()

    def lock_pair(lock: Any) -> Callable[[], None]:
        def pair() -> None:
            lock.acquire()
            lock.release()
        return pair

    return [
        ("under gevent", "threading.local() (a tenacity.Retrying per call made one, before): stdlib", micro.cpu_us(
            threading.local, n)),
        ("under gevent", "  the same, monkey-patched: gevent.local.local()", micro.cpu_us(gevent.local.local, n)),
        ("under gevent", "Lock acquire + release (metrics, logging, breaker, bulkhead, budget): stdlib",
         micro.cpu_us(lock_pair(native), n)),
        ("under gevent", "  the same, monkey-patched: gevent.thread.LockType", micro.cpu_us(lock_pair(patched), n)),
    ]


def worker_pid(service: ServiceProcess) -> int:
    workers = [int(pid) for pid in group_pids(service.pid) if pid != service.pid]
    return workers[0] if workers else int(service.pid)


def under_load(a: ServiceProcess, log_dir: Path, out_dir: Path, seconds: float, py_spy: bool) -> dict[str, Any]:
    """B under gunicorn (one worker) loaded by wrk -c16: CPU per request and, optionally, a py-spy profile."""
    wrk = bench.ensure_wrk()
    if wrk is None:
        return {"error": "wrk is not installed"}
    lua = log_dir / "done.lua"
    lua.write_text(bench.DONE_LUA)
    b = start_service("b", log_dir, mode="gunicorn", a_port=a.port, workers=1, env={"LOG_LEVEL": "INFO"})
    try:
        url = b.url + "/call-echo?msg=hello"
        bench.run_wrk(wrk, lua, url, 4, 1.0)  # warm-up
        out: dict[str, Any] = {}
        profile = log_dir / "b-worker.txt"
        spy = None
        if py_spy:
            exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spy = subprocess.Popen(
                [exe, "record", "--pid", str(worker_pid(b)), "--rate", "250", "--duration", str(round(seconds)),
                 "--format", "raw", "--nonblocking", "--output", str(profile)],
                stdout=subprocess.DEVNULL, stderr=open(log_dir / "py-spy.err", "wb"),  # noqa: SIM115
            )
        before = bench.group_cpu_seconds(b)
        raw = bench.run_wrk(wrk, lua, url, 16, seconds + (1 if py_spy else 0))
        spent = bench.group_cpu_seconds(b) - before
        out.update(requests=raw["requests"], non_2xx=raw["status"],
                   errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
                   rps=round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
                   b_cpu_us_per_req=round(spent / max(1, raw["requests"]) * 1e6, 1))
        if spy is not None:
            try:
                spy.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
            if profile.exists():
                shutil.copy(profile, out_dir / "layers-pyspy.tmp")  # py-spy raw (flamegraph.pl input), git-ignored
            out["profile"] = summarize_profile(profile) if profile.exists() else {
                "error": (log_dir / "py-spy.err").read_text(errors="replace")[-500:]
            }
        return out
    finally:
        b.cleanup()


def _frame_file(frame: str) -> str:
    """``func (path/file.py:12)`` -> ``path/file.py``, shortened to what follows site-packages/ or the stdlib."""
    path = frame.rpartition(" (")[2].rstrip(")").rpartition(":")[0]
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            path = path.split("/", 1)[1] if marker.startswith("/lib") and "/" in path else path
    return path


def summarize_profile(path: Path) -> dict[str, Any]:
    """Shares of samples per part (inclusive) and per package of the innermost frame (self), from py-spy raw."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        files = [_frame_file(frame) for frame in frames]
        for name, prefixes in PROFILE_INCLUSIVE:
            if any(f.startswith(prefixes) for f in files):
                inclusive[name] += count
        innermost = files[-1]
        own[next((p.rstrip("/") for p in SELF_PACKAGES if innermost.startswith(p)), "other")] += count
        leaf[frames[-1]] += count

    def pct(counts: Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / samples, 1) for k, v in counts.most_common()} if samples else {}

    return {
        "samples": samples,
        "inclusive_pct": {name: pct(inclusive).get(name, 0.0) for name, _ in PROFILE_INCLUSIVE},
        "self_pct": pct(own),
        "top_leaf_frames_pct": dict(list(pct(leaf).items())[:12]),
    }


def print_tables(report: dict[str, Any]) -> None:
    total = report["load"].get("b_cpu_us_per_req")
    print(f"\n| layer | what (B, per /call-echo request) | CPU µs | share of B's {total} µs |")
    print("|---|---|---:|---:|")
    for layer, what, us in report["rows"]:
        share = f"{100 * us / total:.0f} %" if total else ""
        print(f"| {layer} | {what} | {us:.1f} | {share} |")
    profile = report["load"].get("profile")
    if profile and "inclusive_pct" in profile:
        print(f"\npy-spy, one B worker under wrk -c16 ({profile['samples']} samples, idle left out):\n")
        print("| part (inclusive: the sample has a frame in it) | share of B's samples |")
        print("|---|---:|")
        for name, pct in profile["inclusive_pct"].items():
            print(f"| {name} | {pct} % |")
        print("\n| package of the innermost frame (self time) | share of B's samples |")
        print("|---|---:|")
        for name, pct in profile["self_pct"].items():
            print(f"| {name} | {pct} % |")
        print("\nhottest leaf frames: " + "; ".join(f"{f} {p} %" for f, p in profile["top_leaf_frames_pct"].items()))
    elif profile:
        print(f"\npy-spy failed: {profile.get('error')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a short load: a smoke run")
    parser.add_argument("--py-spy", action="store_true", help="sample a loaded B worker with py-spy")
    parser.add_argument("--seconds", type=float, help="seconds of wrk load on B (default 6; --quick: 2)")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results; --quick: .../quick)")
    args = parser.parse_args(argv)
    n = 300 if args.quick else 2000
    seconds = args.seconds or (2.0 if args.quick else 6.0)
    out_dir = args.out or REPO / "bench" / "results" / ("quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="echo-layers-"))
    begun = time.monotonic()
    a = start_service("a", log_dir, mode="gunicorn", workers=1, env={"LOG_LEVEL": "WARNING"})
    try:
        rows = server_rows(n)
        app, whole_app = app_rows(a.url, n, log_dir)
        rows += app
        rows += upstream_rows(a.url, a.port, n, log_dir)
        rows.append(("whole app", "B's WSGI app in-process: Flask + middleware + real call to A", whole_app))
        load = under_load(a, log_dir, out_dir, seconds, args.py_spy)
    finally:
        a.cleanup()
    total = load.get("b_cpu_us_per_req")
    if total:
        rows.append(("whole worker", f"B under gunicorn, 1 worker, wrk -c16: {load['rps']} req/s", total))
        in_process = whole_app + sum(us for layer, _, us in rows if layer == "server")
        rows.append(("remainder", "gevent hub, socket syscalls, scheduling (whole worker - app - server rows)",
                     total - in_process))
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "bench/layers.py", *sys.argv[1:]]),
        "machine": bench.machine_info(),
        "repetitions": n,
        "rows": [(layer, what, round(us, 1)) for layer, what, us in rows],
        "load": load,
        "elapsed_s": round(time.monotonic() - begun, 1),
    }
    print_tables(report)
    path = out_dir / "layers.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {path} ({report['elapsed_s']} s); load average {os.getloadavg()[0]:.2f}")
    broken = load.get("error") or (load.get("requests", 0) - load.get("non_2xx", 0) <= 0)
    if broken:
        print(f"HARNESS BROKEN: B under load: {load}; logs kept in {log_dir}", file=sys.stderr)
        return 1
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
