"""Benchmark: three replicas of A, one slow / one frozen, behind B with each balancer, hedging off/on.

    python -m bench.replicas            # full run, ~2 min: bench/results/replicas.{json,png}
    python -m bench.replicas --quick    # ~30 s smoke run of every code path

Production mode throughout (gunicorn + gevent, one worker per process, so each B's balancer,
ejection and hedge budget are one process's). Two scenarios, each against three A replicas:

* slow: one replica started with ``FAULT_DELAY_MS`` (default 200 ms), two healthy;
* frozen: three healthy replicas, one of them SIGSTOPped for the whole run (SIGCONT after it).

For each scenario four B processes run, one per configuration (``UPSTREAM_BALANCER`` round_robin /
p2c_ewma x ``UPSTREAM_HEDGE_DELAY_MS`` off / adaptive), loaded one after another by the same paced
closed-loop load (tests/support/loadgen.py). Recorded per run: p50/p99/p99.9 as the client saw them,
success rate, and the share of B's attempts that went to the bad replica (B's own
``upstream_endpoint_requests_total``). Every process started here is stopped in a ``finally``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.harness import ServiceProcess, start_service
from tests.support.loadgen import LoadGenerator, percentile

REPO = Path(__file__).resolve().parent.parent

CONFIGS = [
    ("round_robin", "off"), ("round_robin", "adaptive"), ("p2c_ewma", "off"), ("p2c_ewma", "adaptive"),
]
QUIET = {"LOG_PROBES": "false", "LOG_LEVEL": "WARNING"}


def label(balancer: str, hedge: str) -> str:
    return f"{balancer}, hedging {'on' if hedge != 'off' else 'off'}"


def endpoint_attempts(b: ServiceProcess) -> dict[str, float]:
    """Attempts B sent to each endpoint (all outcomes), from its /metrics."""
    counts: dict[str, float] = {}
    for line in b.get("/metrics").text.splitlines():
        if line.startswith("upstream_endpoint_requests_total{"):
            labels, _, value = line.rpartition(" ")
            endpoint = labels.split('endpoint="', 1)[1].split('"', 1)[0]
            counts[endpoint] = counts.get(endpoint, 0.0) + float(value)
    return counts


def run_one(b: ServiceProcess, bad: ServiceProcess, args: argparse.Namespace) -> dict[str, Any]:
    before = endpoint_attempts(b)
    results = LoadGenerator(b.port, clients=args.clients, rate_per_client=args.rate, duration_s=args.duration,
                            timeout_s=5).run()
    after = endpoint_attempts(b)
    attempts = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    ok = [r.latency_s for r in results if r.status == 200]
    every = [r.latency_s for r in results]
    bad_key = f"127.0.0.1:{bad.port}"
    total = sum(attempts.values())
    failures = Counter(f"{r.status} {r.body or r.error}"[:160] for r in results if r.status != 200)
    return {
        "requests": len(results),
        "success_rate": round(len(ok) / len(results), 5) if results else 0.0,
        "p50_ms": round(percentile(every, 0.50) * 1000, 2),
        "p99_ms": round(percentile(every, 0.99) * 1000, 2),
        "p999_ms": round(percentile(every, 0.999) * 1000, 2),
        "bad_replica_share": round(attempts.get(bad_key, 0.0) / total, 4) if total else 0.0,
        "attempts_per_call": round(total / len(results), 3) if results else 0.0,
        "failures": dict(failures.most_common(3)),  # why calls were not 200, the commonest reasons
    }


def scenario(name: str, replicas: list[ServiceProcess], bad: ServiceProcess, work: Path,
             args: argparse.Namespace, started: list[ServiceProcess]) -> list[dict[str, Any]]:
    url = ",".join(a.url for a in replicas)
    bs = []
    for balancer, hedge in CONFIGS:
        env = {**QUIET, "SERVICE_A_URL": url, "UPSTREAM_BALANCER": balancer, "UPSTREAM_HEDGE_DELAY_MS": hedge}
        b = start_service("b", work, mode="gunicorn", env=env, workers=1, wait=False)
        started.append(b)
        bs.append(b)
    for b in bs:
        b.wait_healthy()
    rows = []
    for (balancer, hedge), b in zip(CONFIGS, bs, strict=True):
        LoadGenerator(b.port, clients=4, duration_s=0.5, timeout_s=5).run()  # warm the pools
        if name == "frozen":
            bad.pause()
        try:
            row = run_one(b, bad, args)
        finally:
            if name == "frozen":
                bad.resume()
        row.update({"scenario": name, "balancer": balancer, "hedging": hedge})
        rows.append(row)
        print(f"  {name:<6} {label(balancer, hedge):<28} n={row['requests']:<5} ok={row['success_rate']:.2%}"
              f"  p50 {row['p50_ms']:7.1f}  p99 {row['p99_ms']:7.1f}  p99.9 {row['p999_ms']:7.1f} ms"
              f"  bad replica {row['bad_replica_share']:.1%}  attempts/call {row['attempts_per_call']}", flush=True)
        for details, times in row["failures"].items():
            print(f"         {times} x {details}", flush=True)
        if name == "frozen":
            time.sleep(0.5)  # let the thawed replica answer its backlog before the next run
    for b in bs:
        b.cleanup()
    return rows


def draw_chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = [s for s in ("slow", "frozen") if any(r["scenario"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(scenarios), figsize=(6 * len(scenarios), 5.2), squeeze=False)
    width = 0.2
    for axis, name in zip(axes[0], scenarios, strict=True):
        picked = [r for r in rows if r["scenario"] == name]
        for i, (key, text) in enumerate((("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9"))):
            xs = [j + (i - 1) * width for j in range(len(picked))]
            axis.bar(xs, [max(r[key], 0.1) for r in picked], width, label=text)
        axis.set_yscale("log")
        axis.set_xticks(range(len(picked)),
                        [f"{label(r['balancer'], r['hedging'])}\nok {r['success_rate']:.2%}\n"
                         f"bad replica {r['bad_replica_share']:.1%}" for r in picked], fontsize=7)
        axis.set_ylabel("latency, ms (client-measured)")
        axis.set_title(f"one replica {'slow' if name == 'slow' else 'frozen (SIGSTOP)'} of three", fontsize=9)
        axis.grid(True, axis="y", alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short smoke run (~30 s)")
    parser.add_argument("--duration", type=float, help="seconds per run (default 10; --quick: 1.5)")
    parser.add_argument("--clients", type=int, default=12, help="concurrent clients (default 12)")
    parser.add_argument("--rate", type=float, default=25.0, help="requests/s per client (default 25)")
    parser.add_argument("--slow-ms", type=int, default=200, help="FAULT_DELAY_MS of the slow replica")
    parser.add_argument("--scenarios", default="slow,frozen", help="slow,frozen (default both)")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results; --quick: .../quick)")
    args = parser.parse_args(argv)
    args.duration = args.duration or (1.5 if args.quick else 10.0)
    args.out = args.out or REPO / "bench" / "results" / ("quick" if args.quick else "")
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="echo-bench-replicas-"))
    started: list[ServiceProcess] = []
    rows: list[dict[str, Any]] = []
    begun = time.monotonic()
    try:
        slow = start_service("a", work, mode="gunicorn", env={**QUIET, "FAULT_DELAY_MS": str(args.slow_ms)},
                             workers=1)
        started.append(slow)
        healthy = [start_service("a", work, mode="gunicorn", env=QUIET, workers=1) for _ in range(3)]
        started.extend(healthy)
        if "slow" in args.scenarios:
            rows += scenario("slow", [slow, *healthy[:2]], slow, work, args, started)
        if "frozen" in args.scenarios:
            rows += scenario("frozen", healthy, healthy[0], work, args, started)
    finally:
        for service in reversed(started):
            service.cleanup()
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "-m", "bench.replicas", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"duration_s": args.duration, "clients": args.clients, "rate_per_client": args.rate,
                     "slow_ms": args.slow_ms},
        "runs": rows,
        "elapsed_s": round(time.monotonic() - begun, 1),
    }
    (args.out / "replicas.json").write_text(json.dumps(report, indent=2) + "\n")
    title = (f"B over three A replicas (gunicorn+gevent, 1 worker each), {args.clients} clients x "
             f"{args.rate:g}/s, {args.duration:g}s per run; slow = FAULT_DELAY_MS {args.slow_ms}")
    draw_chart(rows, args.out / "replicas.png", title)
    print(f"\nresults: {args.out / 'replicas.json'}, {args.out / 'replicas.png'} ({report['elapsed_s']} s)")
    shutil.rmtree(work, ignore_errors=True)
    broken = [r for r in rows if r["requests"] == 0]
    return 1 if broken or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
