"""A small, bounded load generator for the fault scenarios: N client threads for T seconds.

Each client thread owns one ``http.client`` connection (keep-alive, reopened after an error) and
sends ``GET /call-echo?msg=...`` in a closed loop, recording per request: when it started, how long
it took, the status, whether the body had the documented shape, and the exception type if any.
A separate :class:`HealthSampler` GETs ``/health`` every 100 ms on its own connection.

Everything is bounded: by duration, by a per-client request cap, and by a per-request timeout.
Traffic only goes to 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CIRCUIT_OPEN_MARK = "circuit breaker open"
SHED_MARK = "Load shed"


@dataclass
class Result:
    """One request as the client saw it; ``t`` is seconds since the run started."""

    t: float
    latency_s: float
    status: int | None
    valid: bool
    error: str | None = None  # exception type name when no HTTP answer arrived
    body: Any = None
    retry_after: str | None = None

    @property
    def details(self) -> str:
        return str(self.body.get("details", "")) if isinstance(self.body, dict) else ""

    @property
    def circuit_open(self) -> bool:
        return self.status == 503 and CIRCUIT_OPEN_MARK in self.details

    @property
    def shed(self) -> bool:
        return self.status == 503 and SHED_MARK in self.details


def check_body(msg: str, status: int, content_type: str, raw: bytes) -> tuple[bool, Any]:
    """(valid, parsed body): 200 must be B's echo of ``msg``; errors must be ``{"error", "details"}`` JSON."""
    try:
        body = json.loads(raw)
    except ValueError:
        return False, raw[:200]
    if not content_type.startswith("application/json") or not isinstance(body, dict):
        return False, body
    if status == 200:
        return body == {"msg": msg, "echo_response": {"echo": msg}}, body
    ok = isinstance(body.get("error"), str) and isinstance(body.get("details", ""), str)
    return ok, body


def _request(conn: http.client.HTTPConnection, path: str) -> tuple[int, str, bytes, str | None]:
    conn.request("GET", path)
    response = conn.getresponse()
    raw = response.read()
    return response.status, response.getheader("Content-Type", ""), raw, response.getheader("Retry-After")


class LoadGenerator:
    """``clients`` threads calling ``/call-echo`` on ``port`` until ``duration_s`` passes or ``stop()``,
    each at most ``rate_per_client`` times a second."""

    def __init__(
        self,
        port: int,
        *,
        clients: int = 20,
        duration_s: float = 5.0,
        max_requests_per_client: int = 10_000,
        timeout_s: float = 6.0,
        path: str = "/call-echo",
        rate_per_client: float = 0.0,
    ) -> None:
        self.port = port
        self.clients = clients
        self.duration_s = duration_s
        self.max_requests_per_client = max_requests_per_client
        self.timeout_s = timeout_s
        self.path = path
        # Requests per second per client (0 = back to back). A paced load is a steady load that B
        # can keep up with, so latencies show B's behaviour rather than queueing behind the clients.
        self.interval_s = 1.0 / rate_per_client if rate_per_client > 0 else 0.0
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start_gate = threading.Barrier(clients + 1)
        self.t0 = 0.0

    def now(self) -> float:
        """Seconds since the run started, on the clock the results use."""
        return time.monotonic() - self.t0

    def start(self) -> LoadGenerator:
        for index in range(self.clients):
            thread = threading.Thread(target=self._client, args=(index,), name=f"load-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.t0 = time.monotonic()
        self._start_gate.wait(timeout=30)  # all clients start together (matters for bursts)
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> list[Result]:
        """Wait for every client to finish (bounded by duration + one request timeout)."""
        for thread in self._threads:
            thread.join(timeout=self.duration_s + self.timeout_s + 10)
        with self._lock:
            return sorted(self.results, key=lambda r: r.t)

    def run(self) -> list[Result]:
        return self.start().join()

    def _client(self, index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        self._start_gate.wait(timeout=30)
        try:
            for n in range(self.max_requests_per_client):
                if self._stop.is_set() or self.now() >= self.duration_s:
                    break
                msg = f"c{index}-{n}"
                started = self.now()
                try:
                    status, ctype, raw, retry_after = _request(conn, f"{self.path}?msg={msg}")
                    valid, body = check_body(msg, status, ctype, raw)
                    result = Result(started, self.now() - started, status, valid, None, body, retry_after)
                except (OSError, http.client.HTTPException) as exc:
                    result = Result(started, self.now() - started, None, False, type(exc).__name__)
                    conn.close()  # reconnect on the next request
                with self._lock:
                    self.results.append(result)
                if self.interval_s:
                    pause = started + self.interval_s - self.now()
                    if pause > 0 and self._stop.wait(pause):
                        break
        finally:
            conn.close()


class HealthSampler:
    """GETs ``/health`` every ``interval_s`` on its own connection; records (t, latency_s, status)."""

    def __init__(self, port: int, interval_s: float = 0.1, timeout_s: float = 2.0, max_samples: int = 1000) -> None:
        self.port = port
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_samples = max_samples
        self.samples: list[tuple[float, float, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-sampler", daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> HealthSampler:
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, float, int | None]]:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 2)
        return list(self.samples)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
        try:
            for _ in range(self.max_samples):
                started = time.monotonic()
                try:
                    status: int | None = _request(conn, "/health")[0]
                except (OSError, http.client.HTTPException):
                    status = None
                    conn.close()
                self.samples.append((started - self.t0, time.monotonic() - started, status))
                if self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started))):
                    break
        finally:
            conn.close()


def percentile(values: list[float], share: float) -> float:
    """The ``share`` (0..1) percentile of ``values`` by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


@dataclass
class Summary:
    """The figures each scenario prints (and docs/resilience.md quotes)."""

    name: str
    results: list[Result]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def by_outcome(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for r in self.results:
            if r.status is None:
                counts[f"exception:{r.error}"] += 1
            elif not r.valid:
                counts[f"{r.status} malformed"] += 1
            elif r.circuit_open:
                counts["503 circuit open"] += 1
            elif r.shed:
                counts["503 shed"] += 1
            else:
                counts[str(r.status)] += 1
        return counts

    def latencies(self, keep: Callable[[Result], bool] = lambda r: True) -> list[float]:
        return [r.latency_s for r in self.results if keep(r)]

    def text(self) -> str:
        lat = self.latencies()
        lines = [
            f"== {self.name}",
            f"requests sent: {len(self.results)}",
            "outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.by_outcome.items())),
            f"latency ms: median={statistics.median(lat) * 1000 if lat else 0:.1f} "
            f"p90={percentile(lat, 0.9) * 1000:.1f} max={max(lat, default=0) * 1000:.1f}",
        ]
        fast = self.latencies(lambda r: r.circuit_open)
        if fast:
            lines.append(
                f"circuit-open 503s: n={len(fast)} median={statistics.median(fast) * 1000:.1f}ms "
                f"p90={percentile(fast, 0.9) * 1000:.1f}ms max={max(fast) * 1000:.1f}ms"
            )
        lines.extend(f"{key}: {value}" for key, value in self.extra.items())
        return "\n".join(lines)

    def print(self) -> None:
        print("\n" + self.text(), flush=True)


def health_figures(samples: list[tuple[float, float, int | None]]) -> str:
    lat = [s[1] for s in samples]
    bad = sum(1 for s in samples if s[2] != 200)
    return (
        f"/health samples={len(samples)} non-200={bad} median={statistics.median(lat) * 1000 if lat else 0:.1f}ms "
        f"p90={percentile(lat, 0.9) * 1000:.1f}ms max={max(lat, default=0) * 1000:.1f}ms"
    )


def stop_together(*services: Any, timeout_s: float = 15.0) -> dict[str, int | None]:
    """SIGTERM every service at once and wait for all (exit codes by name:port).

    gunicorn's worker looks at its state once a second, so one graceful stop takes 1-2 s; stopping
    a test's services in parallel instead of one by one (as the fixture teardown does) saves that per
    service. Each ``ServiceProcess.cleanup()`` afterwards only reaps what is left.
    """
    import signal

    for service in services:
        if service.proc.poll() is None:
            service.resume()
            service.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    codes: dict[str, int | None] = {}
    for service in services:
        try:
            codes[f"{service.name}:{service.port}"] = service.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # a stuck one is left to the fixture's SIGKILL
            codes[f"{service.name}:{service.port}"] = None
    return codes
