"""Benchmark: production mode (gunicorn + gevent) against dev mode and the document taken literally.

    python -m bench.run              # full run, ~9 min: results in bench/results/latest.{json,png}
    python -m bench.run --quick      # < 60 s smoke run of every code path (part of scripts/test)

It starts Service A and Service B three times on free loopback ports: in production mode
(``gunicorn -c gunicorn.conf.py``, gevent worker), in dev mode as the document runs them
(``python service_x/app.py``: the project's code on Flask's dev server) and in "literal" mode
(``bench/literal/``: the design document implemented literally, dev server plus
``requests.get`` per call to A, the issue's baseline). It loads A ``/echo`` and B
``/call-echo`` (the B->A chain) with wrk at several connection counts in interleaved rounds;
records RSS and thread count of every process; then freezes A (SIGSTOP) and fires concurrent
calls at B to see how B answers while its upstream hangs. Every process it starts runs in its
own process group and is stopped in a ``finally`` block, also on Ctrl+C.

Exit status: 0 when the harness worked (even if performance targets are missed), 1 when it
broke (a service did not start, a healthy run had no successful request, no /health sample).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.harness import ServiceProcess, group_pids, start_service

REPO = Path(__file__).resolve().parent.parent

# prod: gunicorn + gevent (gunicorn.conf.py); dev: python service_x/app.py; literal: bench/literal/
MODES = ("prod", "dev", "literal")
HARNESS_MODE = {"prod": "gunicorn", "dev": "dev", "literal": "literal"}
BASELINES = {"dev": "", "literal": "_literal"}  # ratio key suffix per baseline: rps_ratio, rps_ratio_literal
TARGETS = {"echo": ("a", "/echo?msg=hello"), "chain": ("b", "/call-echo?msg=hello")}
DONE_LUA = """
-- Print wrk's summary as one JSON line, so the harness never parses wrk's human text.
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


class HarnessError(RuntimeError):
    """The benchmark itself broke (not a missed performance target)."""


# ---------------------------------------------------------------------------------------------
# Load generators
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """One load run against one URL at one connection count."""

    mode: str
    target: str
    connections: int
    round: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors: connect, read, write, timeout
    non_2xx: int
    generator: str
    cpu_us_per_req: dict[str, float] = field(default_factory=dict)  # CPU time each service spent per request

    @property
    def successes(self) -> int:
        return self.requests - self.non_2xx


def ensure_wrk() -> str | None:
    """Path to wrk, installing Debian's package when missing and possible; None if it cannot be had."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        print("wrk is missing: apt-get install -y wrk", flush=True)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 300}
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run([apt, "install", "-y", "wrk"], env=env, check=False, **quiet).returncode != 0:  # type: ignore[call-overload]
            subprocess.run([apt, "update"], env=env, check=False, **quiet)  # type: ignore[call-overload]
            subprocess.run([apt, "install", "-y", "wrk"], env=env, check=False, **quiet)  # type: ignore[call-overload]
    return shutil.which("wrk")


def work_dir(prefix: str) -> Path:
    """A fresh directory for one run: the services' logs (files, never a pipe that fills up) and
    ``done.lua``, the script :func:`run_wrk` is given."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    (work / "done.lua").write_text(DONE_LUA)
    return work


def run_wrk(wrk: str, lua: Path, url: str, connections: int, duration_s: float) -> dict[str, Any]:
    """wrk -t1 against ``url``; its done() hook prints the numbers as JSON."""
    command = [
        wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "5s",
        "--latency", "-s", str(lua), url,
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 30, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data: dict[str, Any] = json.loads(line[len("WRKJSON "):])
            return data
    raise HarnessError(f"wrk gave no summary (exit {proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-500:]}")


def run_python_load(url: str, connections: int, duration_s: float) -> dict[str, Any]:
    """The fallback when wrk cannot be installed: keep-alive threads with http.client.

    Much slower than wrk (the GIL caps it near a few thousand req/s), so its figures are a
    lower bound on what the services can do; the output says which generator ran.
    """
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    latencies: list[float] = []
    counts = Counter[str]()
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s

    def worker() -> None:
        local: list[float] = []
        local_counts = Counter[str]()
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                conn.request("GET", "/" + path)
                response = conn.getresponse()
                response.read()
                local.append(time.perf_counter() - started)
                if not 200 <= response.status < 300:
                    local_counts["non_2xx"] += 1
            except (OSError, http.client.HTTPException):
                local_counts["errors"] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.close()
        with lock:
            latencies.extend(local)
            counts.update(local_counts)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration_s + 10)
    elapsed = time.monotonic() - started
    ordered = sorted(latencies) or [0.0]

    def pct(p: float) -> int:
        return int(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e6)

    return {
        "requests": len(latencies), "duration_us": int(elapsed * 1e6), "connect": 0, "read": counts["errors"],
        "write": 0, "status": counts["non_2xx"], "timeout": 0, "p50_us": pct(50), "p90_us": pct(90),
        "p99_us": pct(99), "max_us": int(ordered[-1] * 1e6),
    }


def to_result(raw: dict[str, Any], mode: str, target: str, connections: int, rnd: int, generator: str) -> LoadResult:
    duration_s = raw["duration_us"] / 1e6
    return LoadResult(
        mode=mode, target=target, connections=connections, round=rnd, requests=raw["requests"],
        duration_s=round(duration_s, 3), rps=round(raw["requests"] / duration_s, 1) if duration_s else 0.0,
        p50_ms=raw["p50_us"] / 1000, p99_ms=raw["p99_us"] / 1000, max_ms=raw["max_us"] / 1000,
        errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"], non_2xx=raw["status"],
        generator=generator,
    )


# ---------------------------------------------------------------------------------------------
# Processes: RSS and threads from /proc
# ---------------------------------------------------------------------------------------------


def process_stats(service: ServiceProcess) -> list[dict[str, Any]]:
    """RSS (current and peak) and thread count of every process of ``service``."""
    rows = []
    for pid in group_pids(service.pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rows.append({
            "pid": pid,
            "role": "master" if pid == service.pid else "worker",
            "rss_mib": round(int(values.get("VmRSS", "0 kB").split()[0]) / 1024, 1),
            "peak_rss_mib": round(int(values.get("VmHWM", "0 kB").split()[0]) / 1024, 1),
            "threads": int(values.get("Threads", "0")),
        })
    return rows


def group_cpu_seconds(service: ServiceProcess) -> float:
    """User + system CPU time of every process of ``service`` so far.

    CPU per request is the figure least disturbed by other load on a shared machine.
    """
    ticks = 0
    for pid in group_pids(service.pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def timed_load(
    load: Callable[[str, int, float], dict[str, Any]], url: str, involved: dict[str, ServiceProcess],
    key: tuple[str, str, int, int], duration: float, generator: str,
) -> LoadResult:
    """One load run at ``url``; ``key`` is (mode, target, connections, round). Records the CPU each
    ``involved`` service spent per request, and prints a line."""
    mode, target, conns, rnd = key
    cpu_before = {n: group_cpu_seconds(svc) for n, svc in involved.items()}
    raw = load(url, conns, duration)
    result = to_result(raw, mode, target, conns, rnd, generator)
    if result.requests:
        result.cpu_us_per_req = {
            n: round((group_cpu_seconds(svc) - cpu_before[n]) / result.requests * 1e6, 1)
            for n, svc in involved.items()
        }
    print(f"  round {rnd} {mode:<8} {target:<10} c={conns:<3} {result.rps:>8.0f} req/s"
          f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
          f"  non-2xx {result.non_2xx}  CPU us/req {result.cpu_us_per_req}", flush=True)
    return result


def snapshot(services: dict[str, dict[str, ServiceProcess]], when: str) -> list[dict[str, Any]]:
    return [
        {"when": when, "mode": mode, "service": name, "processes": process_stats(svc)}
        for mode, pair in services.items() for name, svc in pair.items()
    ]


# ---------------------------------------------------------------------------------------------
# Hang scenario: A frozen with SIGSTOP, many concurrent calls to B, /health sampled every 100 ms
# ---------------------------------------------------------------------------------------------


async def _exchange(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()  # to EOF: the whole answer arrived
    finally:
        writer.close()
    return int(status_line.split()[1]) if status_line.startswith(b"HTTP/") else 0


async def _get(port: int, path: str, timeout: float) -> tuple[int, float]:
    """One GET on a fresh connection: (status, or 0 on failure or timeout; seconds taken)."""
    started = time.perf_counter()
    try:
        status = await asyncio.wait_for(_exchange(port, path), timeout)
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        status = 0
    return status, time.perf_counter() - started


async def _hang(b_port: int, calls: int, timeout: float) -> dict[str, Any]:
    done = asyncio.Event()
    samples: list[float] = []
    sample_failures = 0

    async def sample_health() -> None:
        nonlocal sample_failures
        next_at = time.monotonic()
        while not done.is_set():
            status, took = await _get(b_port, "/health", 5.0)
            if status == 200:
                samples.append(took)
            else:
                sample_failures += 1
            next_at += 0.1
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    sampler = asyncio.create_task(sample_health())
    started = time.perf_counter()
    answers = await asyncio.gather(*(_get(b_port, "/call-echo?msg=hang", timeout) for _ in range(calls)))
    wall_s = time.perf_counter() - started
    done.set()
    await sampler
    by_status = Counter("unanswered" if status == 0 else str(status) for status, _ in answers)
    answered = [took for status, took in answers if status != 0]
    return {
        "calls": calls,
        "by_status": dict(sorted(by_status.items())),
        "answered": len(answered),
        "slowest_answer_s": round(max(answered), 3) if answered else None,
        "wall_s": round(wall_s, 3),
        "health_samples": len(samples),
        "health_failures": sample_failures,
        "health_p50_ms": round(statistics.median(samples) * 1000, 2) if samples else None,
        "health_max_ms": round(max(samples) * 1000, 2) if samples else None,
    }


def hang_scenario(mode: str, a: ServiceProcess, b: ServiceProcess, calls: int, timeout: float) -> dict[str, Any]:
    """Freeze A's whole process group, fire ``calls`` concurrent calls at B, thaw A."""
    threads_during: dict[str, Any] = {}

    def sample_threads() -> None:  # B's processes mid-scenario: how many threads 200 waits cost
        time.sleep(1.0)
        threads_during["b"] = process_stats(b)

    a.pause()
    try:
        probe = threading.Thread(target=sample_threads, daemon=True)
        probe.start()
        result = asyncio.run(_hang(b.port, calls, timeout))
        probe.join(timeout=5)
    finally:
        a.resume()
    result["mode"] = mode
    result["b_processes_during"] = threads_during.get("b", [])
    return result


# ---------------------------------------------------------------------------------------------
# Summaries, targets, chart
# ---------------------------------------------------------------------------------------------


def median_of(results: list[LoadResult], mode: str, target: str, conns: int, attr: str) -> float | None:
    values = [getattr(r, attr) for r in results if (r.mode, r.target, r.connections) == (mode, target, conns)]
    return statistics.median(values) if values else None


def median_row(picked: list[LoadResult]) -> dict[str, Any]:
    """The median over rounds of one (mode, target, connections): rates, latencies, CPU; errors summed."""
    return {
        "rps": round(statistics.median(r.rps for r in picked), 1),
        "p50_ms": round(statistics.median(r.p50_ms for r in picked), 2),
        "p99_ms": round(statistics.median(r.p99_ms for r in picked), 2),
        "errors": sum(r.errors for r in picked),
        "non_2xx": sum(r.non_2xx for r in picked),
        "rounds": len(picked),
        "cpu_us_per_req": {
            n: round(statistics.median(r.cpu_us_per_req.get(n, 0.0) for r in picked), 1)
            for n in picked[0].cpu_us_per_req
        },
    }


def summarize(results: list[LoadResult], connections: list[int]) -> list[dict[str, Any]]:
    """Median over rounds per (target, connections, mode), with production/dev and production/literal ratios."""
    rows = []
    for target in TARGETS:
        for conns in connections:
            row: dict[str, Any] = {"target": target, "connections": conns}
            for mode in MODES:
                picked = [r for r in results if (r.mode, r.target, r.connections) == (mode, target, conns)]
                if not picked:
                    continue
                row[mode] = median_row(picked)
            for base, suffix in BASELINES.items():  # rps_ratio / p99_ratio: vs dev; *_literal: vs literal
                if "prod" in row and base in row:
                    base_rps, base_p99 = row[base]["rps"], row[base]["p99_ms"]
                    row[f"rps_ratio{suffix}"] = round(row["prod"]["rps"] / base_rps, 2) if base_rps else None
                    row[f"p99_ratio{suffix}"] = round(row["prod"]["p99_ms"] / base_p99, 3) if base_p99 else None
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = f"{'target':<7}{'conns':>6} |" + "".join(
        f" {mode + ' req/s':>13}{'p50 ms':>8}{'p99 ms':>8}{'err':>5}{'!2xx':>6} |" for mode in MODES
    ) + "".join(f" {'rps x ' + base[:3]:>10}{'p99 x ' + base[:3]:>10}" for base in BASELINES)
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = [f"{row['target']:<7}{row['connections']:>6} |"]
        for mode in MODES:
            m = row.get(mode)
            if m is None:
                cells.append(f" {'-':>13}{'-':>8}{'-':>8}{'-':>5}{'-':>6} |")
            else:
                cells.append(
                    f" {m['rps']:>13.0f}{m['p50_ms']:>8.2f}{m['p99_ms']:>8.2f}{m['errors']:>5}{m['non_2xx']:>6} |"
                )
        for suffix in BASELINES.values():
            ratio, p99_ratio = row.get(f"rps_ratio{suffix}"), row.get(f"p99_ratio{suffix}")
            cells.append(f" {ratio if ratio is not None else '-':>10}{p99_ratio if p99_ratio is not None else '-':>10}")
        print("".join(cells))


def evaluate_targets(
    rows: list[dict[str, Any]], results: list[LoadResult], hangs: list[dict[str, Any]], calls: int
) -> list[dict[str, Any]]:
    """The issue's targets for production mode, each PASS or SHORT with the measured value."""
    def row(target: str, conns: int) -> dict[str, Any]:
        return next((r for r in rows if (r["target"], r["connections"]) == (target, conns)), {})

    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool | None, measured: str) -> None:
        verdict = "n/a" if ok is None else ("PASS" if ok else "SHORT")
        checks.append({"target": name, "result": verdict, "measured": measured})

    chain64, chain16, echo64 = row("chain", 64), row("chain", 16), row("echo", 64)
    # Each ratio target against both baselines: dev mode (the project's code on the dev server)
    # and literal mode (the design document taken literally, the baseline the issue measured).
    names = {"dev": "dev", "literal": "literal (the issue's baseline)"}
    for base, suffix in BASELINES.items():
        ratio = chain64.get(f"rps_ratio{suffix}")
        check(f"chain @64 conns >= 4x {names[base]}", None if ratio is None else ratio >= 4, f"{ratio}x")
    rps = chain64.get("prod", {}).get("rps")
    check("chain @64 conns >= 1,100 req/s", None if rps is None else rps >= 1100, f"{rps} req/s")
    for base, suffix in BASELINES.items():
        p99_ratio = chain16.get(f"p99_ratio{suffix}")
        check(
            f"chain p99 @16 conns <= 1/3 of {names[base]}", None if p99_ratio is None else p99_ratio <= 1 / 3,
            f"{chain16.get('prod', {}).get('p99_ms')} ms vs {chain16.get(base, {}).get('p99_ms')} ms ({p99_ratio}x)",
        )
    for base, suffix in BASELINES.items():
        ratio = echo64.get(f"rps_ratio{suffix}")
        check(f"A /echo @64 conns >= 3x {names[base]}", None if ratio is None else ratio >= 3, f"{ratio}x")
    prod_hang = next((h for h in hangs if h["mode"] == "prod"), None)
    if prod_hang is None:
        check(f"hang: {calls}/{calls} answered 503 within 2.2 s", None, "not run")
        check("hang: B /health max < 100 ms", None, "not run")
    else:
        got = prod_hang["by_status"].get("503", 0)
        slowest = prod_hang["slowest_answer_s"]
        check(
            f"hang: {calls}/{calls} answered 503 within 2.2 s",
            got == calls and slowest is not None and slowest <= 2.2,
            f"{got}/{calls} 503, slowest {slowest} s",
        )
        health_max = prod_hang["health_max_ms"]
        check(
            "hang: B /health max < 100 ms",
            health_max is not None and health_max < 100 and not prod_hang["health_failures"],
            f"max {health_max} ms, p50 {prod_hang['health_p50_ms']} ms, {prod_hang['health_failures']} failed",
        )
    prod = [r for r in results if r.mode == "prod"]
    bad = [f"{r.target}@{r.connections}" for r in prod if r.errors or r.non_2xx]
    check("zero errors / non-2xx, healthy A (prod)", not bad, "none" if not bad else ", ".join(sorted(set(bad))))
    return checks


def draw_chart(results: list[LoadResult], connections: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the PNG file
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5.2))
    styles = {"prod": "-", "dev": "--", "literal": ":"}
    markers = {"prod": "o", "dev": "s", "literal": "^"}
    colors = {"echo": "tab:blue", "chain": "tab:orange"}
    labels = {
        "echo": "A /echo", "chain": "B /call-echo (B->A)", "prod": "production (gunicorn+gevent)",
        "dev": "dev mode (project code, dev server)", "literal": "literal document (dev server + requests.get)",
    }
    for mode in MODES:
        for target in TARGETS:
            xs = [c for c in connections if median_of(results, mode, target, c, "rps") is not None]
            if not xs:
                continue
            label = f"{labels[target]}, {labels[mode]}"
            left.plot(xs, [median_of(results, mode, target, c, "rps") for c in xs], styles[mode],
                      marker=markers[mode], color=colors[target], label=label)
            right.plot(xs, [median_of(results, mode, target, c, "p99_ms") for c in xs], styles[mode],
                       marker=markers[mode], color=colors[target])
    for axis, ylabel in ((left, "requests/s (median of rounds)"), (right, "p99 latency, ms (median of rounds)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(connections, [str(c) for c in connections])
        axis.set_xlabel("concurrent connections (wrk -t1)")
        axis.set_ylabel(ylabel)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    # Below both plots: inside them the legend would hide the dev and literal lines.
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_info() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    model = ""
    with contextlib.suppress(OSError):
        model = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")), "",
        )
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": sys.version.split()[0],
            "loadavg_1m": round(load1, 2), "loadavg_5m": round(load5, 2)}


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run of every code path (< 60 s)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick: 1)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 8; --quick: 1)")
    parser.add_argument("--connections", help="comma-separated counts (default 1,16,64; --quick: 1,16)")
    parser.add_argument("--hang-calls", type=int, help="concurrent calls while A hangs (default 200; --quick: 40)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="which modes to start: prod,dev,literal (default all three)")
    parser.add_argument("--workers", type=int, default=None, help="WEB_CONCURRENCY for prod A and B (default: theirs)")
    parser.add_argument("--workers-a", type=int, default=None, help="WEB_CONCURRENCY for prod A only")
    parser.add_argument("--workers-b", type=int, default=None, help="WEB_CONCURRENCY for prod B only")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for every service (e.g. LOG_LEVEL=WARNING); repeatable")
    parser.add_argument("--targets", default="echo,chain", help="which loads to run: echo,chain (default both)")
    parser.add_argument("--no-hang", action="store_true", help="skip the hang scenario")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator, not wrk")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results; --quick: .../quick)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (1.0 if args.quick else 8.0)
    args.connections = [int(c) for c in (args.connections or ("1,16" if args.quick else "1,16,64")).split(",")]
    args.hang_calls = args.hang_calls or (40 if args.quick else 200)
    args.out = args.out or REPO / "bench" / "results" / ("quick" if args.quick else "")
    args.modes = [m for m in args.modes.split(",") if m]
    if not set(args.modes) <= set(MODES):
        parser.error(f"--modes takes {','.join(MODES)}")
    args.targets = [t for t in args.targets.split(",") if t]
    if not set(args.targets) <= set(TARGETS):
        parser.error(f"--targets takes {','.join(TARGETS)}")
    return args


def start_pair(
    mode: str, log_dir: Path, args: argparse.Namespace, extra_env: dict[str, str]
) -> dict[str, ServiceProcess]:
    """Start A, then B pointing at it, in ``mode``."""
    workers_a = args.workers_a or args.workers if mode == "prod" else None
    workers_b = args.workers_b or args.workers if mode == "prod" else None
    a = start_service("a", log_dir, mode=HARNESS_MODE[mode], env=extra_env, workers=workers_a)
    try:
        b = start_service("b", log_dir, mode=HARNESS_MODE[mode], a_port=a.port, env=extra_env, workers=workers_b)
    except BaseException:
        a.cleanup()
        raise
    return {"a": a, "b": b}


@dataclass
class Bench:
    """One benchmark run: its settings, the services it started and what it measured."""

    args: argparse.Namespace
    wrk: str | None
    work: Path
    extra_env: dict[str, str]
    services: dict[str, dict[str, ServiceProcess]] = field(default_factory=dict)
    results: list[LoadResult] = field(default_factory=list)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    procs: list[dict[str, Any]] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)

    @property
    def generator(self) -> str:
        return "wrk" if self.wrk else "python"

    def load(self, url: str, conns: int, duration: float) -> dict[str, Any]:
        if self.wrk:
            return run_wrk(self.wrk, self.work / "done.lua", url, conns, duration)
        return run_python_load(url, conns, duration)

    def run(self) -> None:
        """Start everything, measure, and stop everything we started, whatever happens."""
        try:
            for mode in self.args.modes:
                self.services[mode] = start_pair(mode, self.work, self.args, self.extra_env)
            self.procs += snapshot(self.services, "idle")
            self.run_loads()
            self.procs += snapshot(self.services, "after_load")
            if self.args.quick and self.wrk:  # keep the fallback generator from rotting too
                self.check_python_generator()
            if not self.args.no_hang:
                self.run_hangs()
        except HarnessError as exc:
            self.broken.append(str(exc))
        finally:
            for pair in self.services.values():
                for svc in pair.values():
                    svc.cleanup()

    def run_loads(self) -> None:
        # Warm-up: first requests pay lazy imports and open the pool's connections to A.
        for pair in self.services.values():
            for name, path in TARGETS.values():
                self.load(pair[name].url + path, 4, 1.0)
        modes = self.args.modes
        for rnd in range(1, self.args.rounds + 1):
            order = modes if rnd % 2 else list(reversed(modes))  # interleaved: no mode always runs first
            for conns in self.args.connections:
                for target in self.args.targets:
                    for mode in order:
                        self.measure(mode, target, conns, rnd)

    def measure(self, mode: str, target: str, conns: int, rnd: int) -> None:
        name, path = TARGETS[target]
        involved = {n: self.services[mode][n] for n in ("a", "b") if n == "a" or target == "chain"}
        result = timed_load(self.load, self.services[mode][name].url + path, involved,
                            (mode, target, conns, rnd), self.args.duration, self.generator)
        self.results.append(result)
        if result.successes <= 0:
            self.broken.append(f"{mode} {target} c={conns}: no successful request")

    def check_python_generator(self) -> None:
        first = self.services[self.args.modes[0]]
        raw = run_python_load(first["a"].url + TARGETS["echo"][1], 2, 0.5)
        if raw["requests"] - raw["status"] <= 0:
            self.broken.append("python load generator: no successful request")
        print(f"  python load generator self-check: {raw['requests']} requests in 0.5 s")

    def run_hangs(self) -> None:
        for mode in self.args.modes:
            pair = self.services[mode]
            hang = hang_scenario(mode, pair["a"], pair["b"], self.args.hang_calls, timeout=30.0)
            self.hangs.append(hang)
            print(f"  hang {mode:<7}: {hang['by_status']} slowest {hang['slowest_answer_s']} s;"
                  f" B /health p50 {hang['health_p50_ms']} ms max {hang['health_max_ms']} ms"
                  f" ({hang['health_samples']} samples, {hang['health_failures']} failed)", flush=True)
            if hang["health_samples"] == 0 and hang["health_failures"] == 0:
                self.broken.append(f"hang {mode}: no /health sample taken")

    def report(self, info: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
        args = self.args
        rows = summarize(self.results, args.connections)
        report: dict[str, Any] = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(["python", "-m", "bench.run", *sys.argv[1:]]),
            "quick": args.quick,
            "machine": info,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "settings": {"rounds": args.rounds, "duration_s": args.duration, "connections": args.connections,
                         "generator": self.generator, "env": self.extra_env, "modes": args.modes,
                         "workers_a": args.workers_a or args.workers, "workers_b": args.workers_b or args.workers},
            "summary": rows,
            "runs": [asdict(r) for r in self.results],
            "processes": self.procs,
            "hang": self.hangs,
            "harness_errors": self.broken,
            "elapsed_s": round(elapsed_s, 1),
        }
        if not args.quick:
            report["targets"] = evaluate_targets(rows, self.results, self.hangs, args.hang_calls)
        return report


def print_report(report: dict[str, Any]) -> None:
    print()
    print_table(report["summary"])
    if "targets" in report:
        print()
        for item in report["targets"]:
            print(f"  {item['result']:<6} {item['target']:<60} {item['measured']}")
    print()
    for entry in report["processes"]:
        for p in entry["processes"]:
            print(f"  {entry['when']:<10} {entry['mode']:<7} {entry['service']} {p['role']:<6} pid {p['pid']:<7}"
                  f" rss {p['rss_mib']:6.1f} MiB (peak {p['peak_rss_mib']:6.1f})  threads {p['threads']}")
    for hang in report["hang"]:
        threads = sum(p["threads"] for p in hang["b_processes_during"])
        print(f"  during hang, {hang['mode']} B threads (all its processes): {threads}")


def stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through Bench.run's finally: our services are stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    begun = time.monotonic()
    wrk = None if args.python_load else ensure_wrk()
    if wrk is None and not args.python_load:
        print("NOTE: wrk is not installed and could not be installed; using the slower Python load generator")
    args.out.mkdir(parents=True, exist_ok=True)
    work = work_dir("echo-bench-")
    extra_env = {"LOG_LEVEL": "INFO"}  # the services' default, stated so the report shows it
    extra_env.update(dict(item.split("=", 1) for item in args.env))
    bench = Bench(args, wrk, work, extra_env)
    info = machine_info()
    print(f"machine: {info['cpus']} CPUs ({info['cpu_model']}), load average {info['loadavg_1m']} before start;"
          f" generator {bench.generator}; {args.rounds} round(s) x {args.duration:g}s;"
          f" connections {args.connections}", flush=True)
    bench.run()
    report = bench.report(info, time.monotonic() - begun)
    print_report(report)
    (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    if bench.results:
        title = (f"distributed-echo-system: {info['cpus']} CPUs shared by load generator, A and B;"
                 f" {bench.generator} -t1, loopback; median of {args.rounds} round(s) x {args.duration:g}s;"
                 f" load avg {info['loadavg_1m']}")
        draw_chart(bench.results, args.connections, args.out / "latest.png", title)
    print(f"\nresults: {args.out / 'latest.json'}, {args.out / 'latest.png'} ({report['elapsed_s']} s)")
    return harness_status(bench.broken, work)


def harness_status(broken: list[str], work: Path) -> int:
    """1 (and the logs in ``work`` kept) when the harness broke; 0 (and ``work`` removed) otherwise."""
    if broken:
        print("HARNESS BROKEN:\n  " + "\n  ".join(broken), file=sys.stderr)
        print(f"service logs kept in {work}", file=sys.stderr)
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


def run_main(main: Callable[[], int]) -> None:
    """Exit with ``main()``'s status; 130 on Ctrl+C, after main's finally blocks stopped every service."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run_main(main)
