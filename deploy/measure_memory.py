"""Measure the memory of each service's pod-equivalent (gunicorn master + workers) under load.

    python -m deploy.measure_memory [--seconds 10] [--connections 64] [--workers 2]

Starts A and B with the production command (tests/support/harness.py, gunicorn mode, loopback,
free ports), drives B's /call-echo with wrk, samples every process of each service's process
group from /proc, and prints the peak RSS sum (counts pages shared after fork once per process,
an overestimate) and peak PSS sum (shares them out; closest to what a container's cgroup charges).
The Kubernetes requests and limits in deploy/kubernetes/ are sized from these figures.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.harness import ServiceProcess, group_pids, start_service


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB, from /proc/PID/smaps_rollup; zeros if it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def sample(service: ServiceProcess) -> tuple[int, int, int]:
    pids = group_pids(service.pid)
    totals = [memory_kib(pid) for pid in pids]
    return len(pids), sum(t[0] for t in totals), sum(t[1] for t in totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (Debian package wrk)")
    with tempfile.TemporaryDirectory() as tmp:
        quiet = {"LOG_PROBES": "false", "LOG_LEVEL": "WARNING"}
        a = start_service("a", Path(tmp), workers=args.workers, env=quiet)
        b = start_service("b", Path(tmp), workers=args.workers, a_port=a.port, env=quiet)
        try:
            idle = {name: sample(s) for name, s in (("A", a), ("B", b))}
            peak = dict(idle)
            load = subprocess.Popen(  # noqa: S603 - wrk on our own loopback URL
                [wrk, "-t2", f"-c{args.connections}", f"-d{args.seconds:g}s", f"{b.url}/call-echo?msg=hello"],
                stdout=subprocess.PIPE, text=True,
            )
            deadline = time.monotonic() + args.seconds + 30  # bounded even if wrk hangs
            while load.poll() is None and time.monotonic() < deadline:
                for name, s in (("A", a), ("B", b)):
                    now = sample(s)
                    peak[name] = (max(peak[name][0], now[0]), max(peak[name][1], now[1]), max(peak[name][2], now[2]))
                time.sleep(0.2)
            if load.poll() is None:
                load.kill()
            out, _ = load.communicate()
            requests_line = next((line.strip() for line in out.splitlines() if "requests in" in line), "?")
            print(f"load: wrk -c{args.connections} {args.seconds:g}s on B /call-echo: {requests_line}")
            columns = ("idle RSS MiB", "idle PSS MiB", "peak RSS MiB", "peak PSS MiB")
            print(f"{'service':8} {'procs':>5} " + " ".join(f"{c:>13}" for c in columns))
            for name in ("A", "B"):
                procs, irss, ipss = idle[name]
                _, prss, ppss = peak[name]
                figures = (irss, ipss, prss, ppss)
                print(f"{name:8} {procs:>5} " + " ".join(f"{kib / 1024:>13.1f}" for kib in figures))
        finally:
            b.cleanup()
            a.cleanup()


if __name__ == "__main__":
    main()
