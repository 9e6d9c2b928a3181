"""A bounded soak through B to A under gunicorn: no failed request, and no leak of memory, fds or threads.

Skip it locally with ``pytest -m "not soak"``; the full test command runs it. SOAK_SECONDS (default 30)
sets the measured part, after a 5 s warm-up. Figures are printed (run pytest with ``-s`` to see them).
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.harness import ServiceProcess, group_pids

SOAK_S = float(os.environ.get("SOAK_SECONDS", "30"))
WARMUP_S = 5.0
CLIENTS = 6  # moderate concurrency: the machine has 2 cores, shared with A, B and this client
RATE_PER_CLIENT = 50.0  # requests per second per client, ~300/s in all
MAX_REQUESTS_PER_CLIENT = int((SOAK_S + WARMUP_S + 5) * RATE_PER_CLIENT)
RSS_GROWTH_LIMIT_KB = 4 * 1024  # "growth under a few MB after warm-up", per process
FD_GROWTH_LIMIT = 0  # files, pipes, event fds: none may be added
# Sockets are connections: keep-alive clients and B's pool to A, which the kernel spreads over the
# workers (SO_REUSEPORT), so a worker may end holding a few more or fewer than it started with.
# A leak grows with the ~10k requests of the soak; this bound catches that, not the rebalancing.
SOCKET_GROWTH_LIMIT = 2 * CLIENTS
# gevent resolves host names (even "127.0.0.1") in a small native thread pool that starts a
# thread on demand and lets it go when idle, so a worker can show one or two threads more at any
# moment. A leak grows with the requests served (thousands here), which this bound still catches.
THREAD_GROWTH_LIMIT = 2
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class ProcessFigures:
    rss_kb: int
    fds: int  # open descriptors that are not sockets
    sockets: int
    threads: int


def service_pids(service: ServiceProcess) -> list[int]:
    """The service's gunicorn master and workers."""
    return sorted(group_pids(service.pid))


def figures(pid: int) -> ProcessFigures:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed between listdir and readlink
            continue
    sockets = sum(target.startswith("socket:") for target in targets)
    return ProcessFigures(
        rss_kb=int(status["VmRSS"].split()[0]),
        fds=len(targets) - sockets,
        sockets=sockets,
        threads=int(status["Threads"]),
    )


def snapshot(services: list[ServiceProcess]) -> dict[tuple[str, int], ProcessFigures]:
    return {(service.name, pid): figures(pid) for service in services for pid in service_pids(service)}


@dataclass
class Load:
    """CLIENTS threads, each with one keep-alive connection to B, sending paced GET /call-echo."""

    port: int
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)
    idle: list[threading.Event] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for number in range(CLIENTS):
            idle = threading.Event()
            self.idle.append(idle)
            thread = threading.Thread(target=self._client, args=(number, idle), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _client(self, number: int, idle: threading.Event) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        interval = 1 / RATE_PER_CLIENT
        next_at = time.monotonic()
        for i in range(MAX_REQUESTS_PER_CLIENT):
            if self.stop.is_set():
                break
            while self.paused.is_set() and not self.stop.is_set():
                idle.set()
                time.sleep(0.01)
            idle.clear()
            msg = f"soak-{number}-{i}-é€"
            try:
                conn.request("GET", f"/call-echo?msg=soak-{number}-{i}-%C3%A9%E2%82%AC")
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200 and body == (
                    f'{{"msg":"{msg}","echo_response":{{"echo":"{msg}"}}}}'.encode()
                )
                outcome = "ok" if ok else f"HTTP {response.status}"
                if not ok:
                    self._fail(f"{response.status} {body[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                self._fail(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            with self.lock:
                self.counts[outcome] += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        idle.set()
        conn.close()

    def _fail(self, text: str) -> None:
        with self.lock:
            if len(self.failures) < 20:
                self.failures.append(text)

    def pause(self) -> None:
        """Hold every client between requests (connections stay open), so nothing is in flight."""
        self.paused.set()
        deadline = time.monotonic() + 10
        while not all(event.is_set() for event in self.idle) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # the last answers' log lines and socket reads settle

    def resume(self) -> None:
        self.paused.clear()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())


def measure(load: Load, services: list[ServiceProcess]) -> dict[tuple[str, int], ProcessFigures]:
    load.pause()
    try:
        return snapshot(services)
    finally:
        load.resume()


@pytest.mark.soak
def test_soak_through_b_to_a_leaks_nothing(chain):
    """~300 req/s for 30 s through B to A: every request succeeds, and after warm-up each process's RSS grows
    by less than 4 MB, with no more file descriptors or threads than it had."""
    a, b = chain(mode="gunicorn")
    services = [a, b]
    load = Load(b.port)
    started = time.monotonic()
    load.start()
    try:
        time.sleep(WARMUP_S)  # warm-up: lazy imports, connection pools, allocator arenas
        before = measure(load, services)
        requests_before = load.total
        timeline: list[tuple[float, dict[tuple[str, int], ProcessFigures]]] = []
        soak_started = time.monotonic()
        while time.monotonic() - soak_started < SOAK_S:  # a sample every 10 s, the last one at the end
            time.sleep(max(0.0, min(10.0, SOAK_S - (time.monotonic() - soak_started))))
            timeline.append((time.monotonic() - soak_started, measure(load, services)))
        after = timeline[-1][1]
    finally:
        load.finish()
    elapsed = time.monotonic() - soak_started
    soaked = load.total - requests_before

    print(f"\n[soak] {load.total} requests in {time.monotonic() - started:.1f}s ({CLIENTS} clients); measured part: "
          f"{soaked} requests in {elapsed:.1f}s = {soaked / elapsed:.0f} req/s; outcomes {dict(load.counts)}")
    print("[soak] process          RSS after warm-up -> end (growth)   fds      sockets  threads")
    for key in sorted(before):
        first, last = before[key], after.get(key)
        assert last is not None, f"process {key} disappeared during the soak"
        print(f"[soak] {key[0]} pid {key[1]:<8} {first.rss_kb / 1024:7.1f} MB -> {last.rss_kb / 1024:7.1f} MB "
              f"({(last.rss_kb - first.rss_kb) / 1024:+.2f} MB)   {first.fds:>3} -> {last.fds:<3}  "
              f"{first.sockets:>3} -> {last.sockets:<3}  "
              f"{first.threads} -> {last.threads}")
    for t, sample in timeline:
        rss = ", ".join(f"{name}:{pid}={f.rss_kb / 1024:.1f}" for (name, pid), f in sorted(sample.items()))
        print(f"[soak] t={t:5.1f}s RSS MB {rss}")

    assert not load.failures, f"{len(load.failures)}+ failed requests, e.g. {load.failures[:5]}"
    assert soaked >= CLIENTS * RATE_PER_CLIENT * SOAK_S * 0.5, "the soak sent far fewer requests than planned"
    assert set(after) == set(before), "worker processes were replaced during the soak"
    for key, first in before.items():
        last = after[key]
        assert last.rss_kb - first.rss_kb < RSS_GROWTH_LIMIT_KB, f"{key}: RSS grew {last.rss_kb - first.rss_kb} kB"
        assert last.fds - first.fds <= FD_GROWTH_LIMIT, f"{key}: fds {first.fds} -> {last.fds}"
        assert last.sockets - first.sockets <= SOCKET_GROWTH_LIMIT, f"{key}: sockets {first.sockets} -> {last.sockets}"
        grown = last.threads - first.threads
        assert grown <= THREAD_GROWTH_LIMIT, f"{key}: threads {first.threads} -> {last.threads}"
