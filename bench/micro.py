"""CPU cost of the pieces of one request, measured in-process (``python -m bench.micro``).

Throughput on a shared 2-core machine swings with whatever else runs; CPU time per operation,
measured in one process with the pieces interleaved, is far steadier, and it is what decides
how many requests per second two cores can serve. Each line is microseconds of this process's
CPU (user + system) per operation, the median of a few repetitions.

It starts one Service A under gunicorn (1 worker) on a free port for the HTTP-client figures
and stops it at the end.
"""

from __future__ import annotations

import io
import logging
import os
import resource
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.harness import start_service  # imports no prometheus_client (see below)

# prometheus_client picks its storage when first imported: multiprocess, as under gunicorn.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="echo-micro-metrics-"))
REPO = Path(__file__).resolve().parent.parent

REQUEST = b"GET /echo?msg=hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"


def cpu_us(fn: Callable[[], object], n: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of this process's CPU microseconds per call of ``fn``."""
    for _ in range(min(n, 200)):  # warm caches, pools and lazy imports
        fn()
    samples = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(n):
            fn()
        after = resource.getrusage(resource.RUSAGE_SELF)
        spent = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        samples.append(spent / n * 1e6)
    return statistics.median(samples)


def parser_costs() -> dict[str, float]:
    """gunicorn's request parsing: pure Python against gunicorn_h1c (if importable)."""
    from gunicorn.config import Config
    from gunicorn.http.parser import RequestParser

    costs = {}
    for setting in ("python", "fast"):
        cfg = Config()
        cfg.set("http_parser", setting)
        try:
            next(RequestParser(cfg, iter([REQUEST]), ("127.0.0.1", 1)))
        except RuntimeError:  # 'fast' without gunicorn_h1c installed
            continue
        costs[f"gunicorn parse, http_parser={setting}"] = cpu_us(
            lambda cfg=cfg: next(RequestParser(cfg, iter([REQUEST]), ("127.0.0.1", 1))), 5000  # type: ignore[misc]
        )
    return costs


def gunicorn_access_cost() -> dict[str, float]:
    """gunicorn builds its access-log atoms for every request whenever ``logconfig_dict`` is set,
    even though gunicorn.conf.py routes ``gunicorn.access`` to no handler and the line is dropped."""
    from datetime import timedelta

    from gunicorn.config import Config
    from gunicorn.glogging import Logger
    from gunicorn.http.parser import RequestParser
    from gunicorn.http.wsgi import create

    class NullSocket:
        def sendall(self, data: bytes) -> None:
            pass

    cfg = Config()
    cfg.set("logconfig_dict", {
        "version": 1, "disable_existing_loggers": False,
        "loggers": {"gunicorn.access": {"handlers": [], "propagate": False}}, "root": {"level": "WARNING"},
    })
    log = Logger(cfg)
    req = next(RequestParser(cfg, iter([REQUEST]), ("127.0.0.1", 1)))
    resp, environ = create(req, NullSocket(), ("127.0.0.1", 1), ("127.0.0.1", 80), cfg)
    resp.start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "16")])
    took = timedelta(microseconds=400)
    return {"gunicorn access() per request, line dropped (logconfig_dict set)": cpu_us(
        lambda: log.access(resp, req, environ, took), 5000
    )}


def logging_costs(log_dir: Path) -> dict[str, float]:
    """One access line in the services' text and JSON formats, written to a file; and dropped."""
    from echokit.logs import configure_logging

    costs = {}
    real_stderr = sys.stderr
    try:
        for fmt, level in (("text", "INFO"), ("json", "INFO"), ("text", "WARNING")):
            with open(log_dir / f"micro-{fmt}.log", "w", encoding="utf-8") as sink:
                sys.stderr = sink  # the handler binds sys.stderr when it is made
                logger = configure_logging("bench_micro", level, fmt)
                extra = {"method": "GET", "path": "/echo", "status": 200, "latency_ms": 0.42}

                def line(logger: logging.Logger = logger, extra: dict[str, Any] = extra) -> None:
                    logger.info("%s %s %d %.2fms", "GET", "/echo", 200, 0.42, extra=extra)

                costs[f"access log line, LOG_FORMAT={fmt} LOG_LEVEL={level}"] = cpu_us(line, 5000)
    finally:
        sys.stderr = real_stderr
    return costs


def metrics_and_json_costs() -> dict[str, float]:
    from echokit.metrics import Metrics
    from echokit.resilience.clock import SYSTEM_CLOCK
    from echokit.resilience.deadline import Deadline
    from echokit.resilience.retry import RetryBudget, RetryPolicy, run_with_retries
    from echokit.responses import json_response, to_json
    from echokit.settings import service_b_settings

    metrics = Metrics(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    defaults = service_b_settings({}).upstream  # B's default policy, as declared in echokit.settings
    budget = RetryBudget(
        defaults.retry_budget_ratio, defaults.retry_budget_min_retries, defaults.retry_budget_window_s, SYSTEM_CLOCK
    )
    policy = RetryPolicy(defaults.retry_attempts, defaults.retry_backoff_initial_s, defaults.retry_backoff_max_s)

    def retried() -> object:
        return run_with_retries(
            lambda attempt: attempt, policy=policy, deadline=Deadline(2.0, SYSTEM_CLOCK), budget=budget,
            is_retryable=lambda exc: False,
        )

    return {
        "metrics: observe_request (multiprocess files)": cpu_us(
            lambda: metrics.observe_request("GET", "/echo", 200, 0.0004), 5000
        ),
        "JSON body: to_json": cpu_us(lambda: to_json({"echo": "hello"}), 20000),
        "JSON response: json_response (Flask Response)": cpu_us(lambda: json_response({"echo": "hello"}), 5000),
        "retry wrapper: run_with_retries, first attempt succeeds": cpu_us(retried, 5000),
    }


def client_costs(a_url: str, a_port: int) -> dict[str, float]:
    """Client-side CPU of one call to a real Service A, per HTTP client."""
    import http.client

    import requests
    import urllib3

    from echokit.settings import service_b_settings
    from echokit.upstream import EchoClient

    quiet = logging.getLogger("bench_micro_client")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    pool = urllib3.HTTPConnectionPool("127.0.0.1", a_port, maxsize=4, retries=False)
    session = requests.Session()
    conn = http.client.HTTPConnection("127.0.0.1", a_port)
    client = EchoClient(service_b_settings({"SERVICE_A_URL": a_url}).upstream, logger=quiet)

    def plain() -> None:
        conn.request("GET", "/echo?msg=hello")
        conn.getresponse().read()

    costs = {
        "client: http.client keep-alive": cpu_us(plain, 1000),
        "client: urllib3 pool keep-alive": cpu_us(lambda: pool.urlopen("GET", "/echo?msg=hello").data, 1000),
        "client: EchoClient.echo (own transport + deadline, retry, breaker, bulkhead)": cpu_us(
            lambda: client.echo("hello"), 1000
        ),
        "client: requests.Session keep-alive": cpu_us(lambda: session.get(f"{a_url}/echo?msg=hello").content, 1000),
        "client: requests.get, new connection per call (the document)": cpu_us(
            lambda: requests.get(f"{a_url}/echo?msg=hello", timeout=5).content, 300
        ),
    }
    conn.close()
    session.close()
    client.close()
    pool.close()
    return costs


def app_costs(a_url: str, log_dir: Path) -> dict[str, float]:
    """The whole Flask app with its middleware, called as WSGI (no server, no socket to the client)."""
    real_stderr = sys.stderr
    costs = {}
    os.environ["SERVICE_A_URL"] = a_url
    from service_a.app import create_app as create_a
    from service_b.app import create_app as create_b

    try:
        with open(log_dir / "micro-apps.log", "w", encoding="utf-8") as sink:
            sys.stderr = sink
            for name, factory, path in (("A /echo", create_a, "/echo"), ("B /call-echo (incl. client)", create_b,
                                                                           "/call-echo")):
                app = factory()

                def call(app: Any = app, path: str = path) -> None:
                    environ = {
                        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "msg=hello",
                        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
                        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sink,
                    }
                    body = app(environ, lambda status, headers, exc_info=None: None)
                    b"".join(body)
                    getattr(body, "close", lambda: None)()

                costs[f"WSGI app: {name}, access log on"] = cpu_us(call, 1000)
    finally:
        sys.stderr = real_stderr
    return costs


def main() -> int:
    log_dir = Path(tempfile.mkdtemp(prefix="echo-micro-"))
    a = start_service("a", log_dir, mode="gunicorn", workers=1, env={"LOG_LEVEL": "WARNING"})
    try:
        results: dict[str, float] = {}
        results.update(parser_costs())
        results.update(gunicorn_access_cost())
        results.update(logging_costs(log_dir))
        results.update(metrics_and_json_costs())
        results.update(client_costs(a.url, a.port))
        results.update(app_costs(a.url, log_dir))
    finally:
        a.cleanup()
    load1 = os.getloadavg()[0]
    print(f"CPU microseconds per operation (median of 5), load average {load1:.2f}:")
    for name, value in results.items():
        print(f"  {value:8.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
