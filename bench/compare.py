"""Side by side in one run: the production chain against a bare Flask and an asyncio baseline (issue 13).

    python -m bench.compare            # 3 interleaved rounds x 5 s: bench/results/compare.json
    python -m bench.compare --quick    # < 60 s smoke run of every code path: bench/results/quick/

It starts three pairs of Service A and Service B on free loopback ports, each service with the
same number of worker processes (``--workers``, default 2):

* ``prod``: the project, as production runs it (``gunicorn -c gunicorn.conf.py``, every feature on);
* ``bare``: bench/baselines/flask_{a,b}.py, bare Flask on granian (WSGI) with a plain urllib3 pool,
  no logging or metrics;
* ``aiohttp``: bench/baselines/aio.py, an aiohttp server and an aiohttp client session.

Then, per round and with the order of the modes alternating, wrk -t1 loads the B->A chain
(``/call-echo``) at 64 connections, the chain at 1 connection (for its p50) and A ``/echo`` at 64
connections. It reports the median of the rounds, the CPU each service spent per request, the
RSS of every worker, every socket error and non-2xx answer, and the issue's acceptance ratios
as met / not met. The wrk, /proc and process helpers are bench/run.py's.

Exit status: 0 when the harness worked (even if a ratio is not met), 1 when it broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import run as bench  # wrk and /proc statistics
from tests.support.harness import ServiceProcess, launch, start_service

REPO = Path(__file__).resolve().parent.parent


BASELINES = REPO / "bench" / "baselines"
MODES = ("prod", "bare", "aiohttp")
LABELS = {
    "prod": "this project (gunicorn + gevent, all features)",
    "bare": "bare Flask + granian (WSGI) + urllib3",
    "aiohttp": "aiohttp server + aiohttp client",
}
# (name, service, path, connections): the three loads the acceptance names
LOADS = (
    ("chain_c64", "b", "/call-echo?msg=hello", 64),
    ("chain_c1", "b", "/call-echo?msg=hello", 1),
    ("echo_c64", "a", "/echo?msg=hello", 64),
)


@dataclass(frozen=True)
class Criterion:
    """One acceptance line: ``prod`` / ``baseline`` of ``metric`` on ``load``, compared with ``bound``."""

    name: str
    load: str
    metric: str  # "rps" or "p50_ms"
    baseline: str
    bound: float
    at_least: bool  # True: ratio >= bound; False: ratio <= bound


CRITERIA = (
    Criterion("chain c64 req/s >= 1.3x bare Flask", "chain_c64", "rps", "bare", 1.3, True),
    Criterion("chain c64 req/s >= 0.4x aiohttp (goal 0.5x)", "chain_c64", "rps", "aiohttp", 0.4, True),
    Criterion("chain c1 p50 <= 0.8x bare Flask", "chain_c1", "p50_ms", "bare", 0.8, False),
    Criterion("A /echo c64 req/s >= 1.3x bare Flask", "echo_c64", "rps", "bare", 1.3, True),
)


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without the services' own variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVICE_", "FAULT_", "OTEL_", "PROMETHEUS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:  # all bound at once, so no two can be handed the same port
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def start_process(name: str, mode: str, command: list[str], log_dir: Path, port: int, env: dict[str, str],
                  cwd: Path) -> ServiceProcess:
    """Start ``command`` in its own session, output to a log file, and wait for its /health."""
    return launch(name, mode, command, port, env, log_dir / f"{mode}-{name}.log", cwd=cwd)


def start_pair(mode: str, log_dir: Path, workers: int) -> dict[str, Any]:
    """Start A, then B pointing at it, in ``mode``."""
    if mode == "prod":
        env = {"LOG_LEVEL": "INFO"}  # the services' default, stated so the report shows it
        a = start_service("a", log_dir, mode="gunicorn", env=env, workers=workers)
        try:
            return {"a": a, "b": start_service("b", log_dir, mode="gunicorn", a_port=a.port, env=env,
                                                     workers=workers)}
        except BaseException:
            a.cleanup()
            raise
    ports = dict(zip(("a", "b"), free_ports(2), strict=True))
    started: dict[str, Any] = {}
    try:
        for name, port in ports.items():
            env = clean_env({"SERVICE_A_URL": f"http://127.0.0.1:{ports['a']}"})
            if mode == "bare":
                granian = str(Path(sys.executable).with_name("granian"))
                command = [granian, "--interface", "wsgi", "--workers", str(workers), "--no-log",
                           "--host", "127.0.0.1", "--port", str(port), f"flask_{name}:app"]
            else:
                command = [sys.executable, str(BASELINES / "aio.py"), name, "--port", str(port),
                           "--workers", str(workers), "--a-url", f"http://127.0.0.1:{ports['a']}"]
            started[name] = start_process(name, mode, command, log_dir, port, env, BASELINES)
    except BaseException:
        for service in started.values():
            service.cleanup()
        raise
    return started


def worker_rss(service: Any) -> list[float]:
    """RSS in MiB of each worker process of ``service`` (the master, if any, left out)."""
    rows = bench.process_stats(service)
    workers = [r for r in rows if r["role"] == "worker"] or rows
    return sorted(float(r["rss_mib"]) for r in workers)


@dataclass
class Comparison:
    """One comparison run: its settings, the services it started and what it measured."""

    args: argparse.Namespace
    wrk: str
    work: Path
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: list[Any] = field(default_factory=list)  # bench.LoadResult, target = the load's name
    rss: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)

    def run(self) -> None:
        """Start everything, measure, and stop everything we started, whatever happens."""
        try:
            for mode in self.args.modes:
                self.services[mode] = start_pair(mode, self.work, self.args.workers)
            self.check_answers()
            self.sample_rss("idle")
            for pair in self.services.values():  # warm-up: lazy imports, pools open their connections
                for _, name, path, _ in LOADS[::2]:
                    bench.run_wrk(self.wrk, self.work / "done.lua", pair[name].url + path, 8, 1.0)
            for rnd in range(1, self.args.rounds + 1):
                order = self.args.modes if rnd % 2 else list(reversed(self.args.modes))
                for load in self.args.loads:
                    for mode in order:
                        self.measure(mode, load, rnd)
            self.sample_rss("after_load")
        except (bench.HarnessError, RuntimeError, TimeoutError, OSError, ValueError) as exc:
            self.broken.append(str(exc)[:2000])
        finally:
            for pair in self.services.values():
                for service in pair.values():
                    service.cleanup()

    def check_answers(self) -> None:
        """Every mode must answer with the project's JSON, or the comparison compares different work."""
        expected = {"a": ("/echo?msg=hello", {"echo": "hello"}),
                    "b": ("/call-echo?msg=hello", {"msg": "hello", "echo_response": {"echo": "hello"}})}
        for mode, pair in self.services.items():
            for name, (path, body) in expected.items():
                got = pair[name].get(path)
                missing = pair[name].get(path.split("?")[0]) if name == "b" else None
                if got.status_code != 200 or got.json() != body:
                    raise bench.HarnessError(f"{mode} {name} {path}: {got.status_code} {got.text[:200]}")
                if missing is not None and missing.status_code != 400:
                    raise bench.HarnessError(f"{mode} b /call-echo without msg: {missing.status_code}, not 400")

    def sample_rss(self, when: str) -> None:
        for mode, pair in self.services.items():
            self.rss.setdefault(mode, {})[when] = {name: worker_rss(svc) for name, svc in pair.items()}

    def measure(self, mode: str, load: tuple[str, str, str, int], rnd: int) -> None:
        target, name, path, conns = load
        pair = self.services[mode]
        involved = {n: pair[n] for n in ("a", "b") if n == "a" or name == "b"}
        result = bench.timed_load(
            lambda url, c, d: bench.run_wrk(self.wrk, self.work / "done.lua", url, c, d),
            pair[name].url + path, involved, (mode, target, conns, rnd), self.args.duration, "wrk",
        )
        self.results.append(result)
        if result.successes <= 0:
            self.broken.append(f"{mode} {target}: no successful request")

    def summary(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Median over rounds, per load and mode."""
        table: dict[str, dict[str, dict[str, Any]]] = {}
        for target, *_ in LOADS:
            for mode in self.args.modes:
                picked = [r for r in self.results if (r.mode, r.target) == (mode, target)]
                if not picked:
                    continue
                table.setdefault(target, {})[mode] = bench.median_row(picked)
        return table


def verdicts(table: dict[str, dict[str, dict[str, Any]]], results: list[Any]) -> list[dict[str, Any]]:
    """The issue's acceptance ratios, each met / not met (n/a when a mode did not run)."""
    out = []
    for c in CRITERIA:
        prod, base = table.get(c.load, {}).get("prod"), table.get(c.load, {}).get(c.baseline)
        ratio = round(prod[c.metric] / base[c.metric], 3) if prod and base and base[c.metric] else None
        met = None if ratio is None else (ratio >= c.bound if c.at_least else ratio <= c.bound)
        measured = (f"{ratio}x ({prod[c.metric]} vs {base[c.metric]} {'req/s' if c.metric == 'rps' else 'ms'})"
                    if prod and base else "not run")
        out.append({"criterion": c.name, "ratio": ratio, "result": {None: "n/a", True: "met", False: "not met"}[met],
                    "measured": measured})
    bad = sorted({f"{r.mode} {r.target}" for r in results if r.errors or r.non_2xx})
    out.append({"criterion": "zero errors / non-2xx in every healthy run (all modes)", "ratio": None,
                "result": "not met" if bad else "met", "measured": ", ".join(bad) or "none"})
    return out


def print_report(report: dict[str, Any]) -> None:
    modes = report["settings"]["modes"]
    print(f"\n| load | {' | '.join(LABELS[m] for m in modes)} |")
    print("|---|" + "---:|" * len(modes))
    for target, row in report["summary"].items():
        cells = []
        for mode in modes:
            m = row.get(mode)
            cells.append("-" if m is None else (f"{m['p50_ms']:.2f} ms p50" if target == "chain_c1"
                                               else f"{m['rps']:,.0f} req/s"))
        print(f"| {target} | {' | '.join(cells)} |")
    rss = report["rss_mib_per_worker"]
    print("| RSS per worker, A / B (MiB, after load) | " + " | ".join(
        "/".join(f"{max(rss[m]['after_load'][n], default=0):.0f}" for n in ("a", "b")) if m in rss else "-"
        for m in modes) + " |")
    print()
    for v in report["acceptance"]:
        print(f"  {v['result']:<8} {v['criterion']:<52} {v['measured']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run of every code path (< 60 s)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick: 1)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 5; --quick: 1)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per service (default 2)")
    parser.add_argument("--modes", default=",".join(MODES), help="which to start: prod,bare,aiohttp (default all)")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results; --quick: .../quick)")
    parser.add_argument("--loads", default=",".join(name for name, *_ in LOADS),
                        help="which loads to measure (default all: chain_c64,chain_c1,echo_c64)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.out = args.out or REPO / "bench" / "results" / ("quick" if args.quick else "")
    args.modes = [m for m in args.modes.split(",") if m]
    if not args.modes or not set(args.modes) <= set(MODES):
        parser.error(f"--modes takes {','.join(MODES)}")
    wanted = [name for name in args.loads.split(",") if name]
    args.loads = [load for load in LOADS if load[0] in wanted]
    if not args.loads or len(args.loads) != len(wanted):
        parser.error(f"--loads takes {','.join(name for name, *_ in LOADS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, bench.stop_on_sigterm)  # unwinds through the finally blocks
    begun = time.monotonic()
    wrk = bench.ensure_wrk()
    if wrk is None:
        print("HARNESS BROKEN: the comparison needs wrk (Debian package wrk)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    work = bench.work_dir("echo-compare-")
    info = bench.machine_info()
    print(f"machine: {info['cpus']} CPUs ({info['cpu_model']}), load average {info['loadavg_1m']} before start;"
          f" {args.workers} workers per service; {args.rounds} round(s) x {args.duration:g}s; wrk -t1", flush=True)
    comparison = Comparison(args, wrk, work)
    comparison.run()
    table = comparison.summary()
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "bench/compare.py", *sys.argv[1:]]),
        "quick": args.quick,
        "machine": info,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "settings": {"rounds": args.rounds, "duration_s": args.duration, "workers": args.workers,
                     "modes": args.modes, "labels": {m: LABELS[m] for m in args.modes},
                     "loads": {t: {"service": n, "path": p, "connections": c} for t, n, p, c in args.loads}},
        "summary": table,
        "acceptance": verdicts(table, comparison.results),
        "rss_mib_per_worker": comparison.rss,
        "runs": [asdict(r) for r in comparison.results],
        "harness_errors": comparison.broken,
        "elapsed_s": round(time.monotonic() - begun, 1),
    }
    print_report(report)
    path = args.out / "compare.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {path} ({report['elapsed_s']} s)")
    return bench.harness_status(comparison.broken, work)


if __name__ == "__main__":
    bench.run_main(main)
