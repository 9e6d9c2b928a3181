"""What one A ``/echo`` costs at the floor: the same work on the leanest server (issue 13).

    python -m bench.floor            # 3 interleaved rounds x 5 s, ~2 min: bench/results/floor.json
    python -m bench.floor --quick    # 1 round x 1 s, a smoke run

Issue 13 asks for production A's ``/echo`` at 64 connections to reach 1.3x bare Flask on granian.
On a machine where wrk and the server share the CPUs, throughput follows CPU per request, so the
target is about bare's CPU per request divided by 1.3. This bench puts that figure next to what
the same request costs when nearly nothing but Flask runs: every row serves ``GET /echo?msg=hello``
to ``wrk -t1 -c64`` with ``--workers`` processes (default 2, as issue 13 measures), and the figure is
the CPU per request of all its processes.

* ``fixed``: bench/baselines/floor_server.py with no app, a prebuilt answer: the floor of any
  gevent server here (its system calls, loop and greenlet switches);
* ``flask``: the same server calling the bare Flask app of the comparison baseline;
* ``a_app``: the same server calling the project's Service A app (request id, access line, metrics
  in per-process files as under gunicorn);
* ``prod``: Service A as production runs it (gunicorn + the project's gevent worker);
* ``bare``: the comparison's baseline, bare Flask on granian.

``flask - fixed`` is what plain Flask itself costs per request in a serving loop. Exit status: 0
when the harness worked (whatever the figures), 1 when it broke.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import run as bench  # wrk and /proc statistics
from bench.compare import BASELINES, REPO, clean_env, free_ports, start_process
from tests.support.harness import ServiceProcess, start_service

ROWS = ("fixed", "flask", "a_app", "prod", "bare")
LABELS = {
    "fixed": "leanest gevent server, prebuilt answer (no app)",
    "flask": "leanest gevent server + bare Flask app",
    "a_app": "leanest gevent server + Service A's app (all features)",
    "prod": "Service A in production (gunicorn + project worker)",
    "bare": "bare Flask on granian (issue 13's baseline)",
}
PATH = "/echo?msg=hello"
CONNECTIONS = 64
TARGET_RATIO = 1.3  # issue 13: production /echo >= 1.3x bare


def start_row(row: str, log_dir: Path, workers: int) -> ServiceProcess:
    """The serving processes for ``row``, healthy."""
    if row == "prod":
        return start_service("a", log_dir, mode="gunicorn", env={"LOG_LEVEL": "INFO"}, workers=workers)
    (port,) = free_ports(1)
    env = clean_env({"LOG_LEVEL": "INFO"})
    if row == "a_app":  # metrics in per-process files, as under gunicorn: only the server differs from prod
        metrics_dir = log_dir / "metrics-a_app"
        metrics_dir.mkdir(exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    if row == "bare":
        granian = str(Path(sys.executable).with_name("granian"))
        command = [granian, "--interface", "wsgi", "--workers", str(workers), "--no-log", "--host", "127.0.0.1",
                   "--port", str(port), "flask_a:app"]
    else:
        app = {"fixed": "fixed", "flask": "flask", "a_app": "a"}[row]
        command = [sys.executable, str(BASELINES / "floor_server.py"), "--app", app, "--port", str(port),
                   "--workers", str(workers)]
    return start_process("a", row, command, log_dir, port, env, BASELINES)


def check_answer(row: str, service: ServiceProcess) -> None:
    """Every row must give A's answer, or it measures different work."""
    got = service.get(PATH)
    if got.status_code != 200 or got.json() != {"echo": "hello"}:
        raise bench.HarnessError(f"{row} {PATH}: {got.status_code} {got.text[:200]}")


def summarize(results: list[bench.LoadResult]) -> dict[str, dict[str, Any]]:
    """Per row: median req/s and median CPU microseconds per request over the rounds."""
    table: dict[str, dict[str, Any]] = {}
    for row in ROWS:
        picked = [r for r in results if r.mode == row and r.cpu_us_per_req]
        if picked:
            table[row] = {
                "label": LABELS[row],
                "rps": round(statistics.median(r.rps for r in picked), 1),
                "cpu_us_per_req": round(statistics.median(r.cpu_us_per_req["a"] for r in picked), 1),
                "errors": sum(r.errors for r in picked), "non_2xx": sum(r.non_2xx for r in picked),
            }
    return table


def reading(table: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The figures the table is for: Flask's own cost in a loop and the CPU per request issue 13 needs."""
    cpu = {row: values["cpu_us_per_req"] for row, values in table.items()}
    out: dict[str, float] = {}
    if "bare" in cpu:
        out["target_cpu_us_per_req"] = round(cpu["bare"] / TARGET_RATIO, 1)
    if {"flask", "fixed"} <= cpu.keys():
        out["flask_own_cpu_us_per_req"] = round(cpu["flask"] - cpu["fixed"], 1)
    if {"a_app", "flask"} <= cpu.keys():
        out["features_over_flask_us_per_req"] = round(cpu["a_app"] - cpu["flask"], 1)
    if {"prod", "a_app"} <= cpu.keys():
        out["prod_server_over_floor_us_per_req"] = round(cpu["prod"] - cpu["a_app"], 1)
    return out


def print_report(report: dict[str, Any]) -> None:
    settings = report["settings"]
    print(f"\nA /echo, {settings['workers']} process(es), wrk -t1 -c{CONNECTIONS}"
          f" (medians of {settings['rounds']} round(s)):")
    for row, values in report["summary"].items():
        print(f"  {row:<6} {values['label']:<56} {values['rps']:>9,.0f} req/s  {values['cpu_us_per_req']:>6.1f} µs/req"
              f"  errors {values['errors']}  non-2xx {values['non_2xx']}")
    for name, value in report["reading"].items():
        print(f"  {name}: {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 round x 1 s smoke run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick: 1)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 5; --quick: 1)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"which rows (default all: {','.join(ROWS)})")
    parser.add_argument("--workers", type=int, default=2, help="processes per row (default 2)")
    parser.add_argument("--out", type=Path, help="results directory (default bench/results; --quick: .../quick)")
    args = parser.parse_args(argv)
    rows = [row for row in ROWS if row in args.rows.split(",")]
    if not rows or len(rows) != len([r for r in args.rows.split(",") if r]):
        parser.error(f"--rows takes {','.join(ROWS)}")
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (1.0 if args.quick else 5.0)
    out = args.out or REPO / "bench" / "results" / ("quick" if args.quick else "")
    signal.signal(signal.SIGTERM, bench.stop_on_sigterm)  # unwinds through the finally blocks
    begun = time.monotonic()
    wrk = bench.ensure_wrk()
    if wrk is None:
        print("HARNESS BROKEN: the floor bench needs wrk (Debian package wrk)", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    work = bench.work_dir("echo-floor-")
    info = bench.machine_info()
    print(f"machine: {info['cpus']} CPUs, load average {info['loadavg_1m']} before start;"
          f" {args.workers} process(es) per row; {rounds} round(s) x {duration:g}s; wrk -t1 -c{CONNECTIONS}",
          flush=True)
    results: list[bench.LoadResult] = []
    broken: list[str] = []
    services: dict[str, ServiceProcess] = {}
    try:
        for row in rows:
            services[row] = start_row(row, work, args.workers)
            check_answer(row, services[row])
            bench.run_wrk(wrk, work / "done.lua", services[row].url + PATH, 8, 1.0)  # warm-up
        for rnd in range(1, rounds + 1):
            for row in rows if rnd % 2 else rows[::-1]:
                result = bench.timed_load(
                    lambda url, c, d: bench.run_wrk(wrk, work / "done.lua", url, c, d),
                    services[row].url + PATH, {"a": services[row]}, (row, "echo_c64", CONNECTIONS, rnd),
                    duration, "wrk",
                )
                results.append(result)
                if result.successes <= 0:
                    broken.append(f"{row}: no successful request")
    except (bench.HarnessError, RuntimeError, TimeoutError, OSError, ValueError) as exc:
        broken.append(str(exc)[:2000])
    finally:
        for service in services.values():
            service.cleanup()
    table = summarize(results)
    report: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "-m", "bench.floor", *(argv if argv is not None else sys.argv[1:])]),
        "machine": info,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "settings": {"rounds": rounds, "workers": args.workers, "duration_s": duration, "connections": CONNECTIONS,
                     "path": PATH, "rows": rows},
        "summary": table,
        "reading": reading(table),
        "runs": [asdict(r) for r in results],
        "harness_errors": broken,
        "elapsed_s": round(time.monotonic() - begun, 1),
    }
    print_report(report)
    path = out / "floor.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {path} ({report['elapsed_s']} s)")
    return bench.harness_status(broken, work)


if __name__ == "__main__":
    bench.run_main(main)
