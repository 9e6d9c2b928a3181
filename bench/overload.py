"""Overload benchmark (issue 15): goodput and latency of admitted calls versus offered load.

    python -m bench.overload                 # ~6 min: results in bench/results/overload.{json,png}
    python -m bench.overload --quick         # ~1 min smoke run of every code path

Starts A and B in production mode (gunicorn, defaults) twice: with adaptive admission (the default)
and with only the static cap (``ADMISSION_ENABLED=false``: UPSTREAM_MAX_IN_FLIGHT=256 per process).
Against B's ``/call-echo`` it runs, per mode:

* a closed loop (each connection sends its next request when the last answer arrived) at
  16 -> 1,024 connections;
* an open loop at a fixed rate of 1x, 2x and 4x capacity (capacity: the adaptive run's goodput at
  16 connections), where latency counts from when a request was *due*, so a slow server cannot
  slow the offered load down (no coordinated omission);
* wrk at 16 and 512 connections with a 5 s timeout, the issue's own check.

The load generator of the first two is this file run as ``--generate`` in its own process: gevent,
raw keep-alive sockets, one record per request (status, latency). It shares the 2 CPUs with A and
B, as wrk does. Every process started is stopped in a ``finally`` block.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 5.0
PATH = "/call-echo?msg=hi"


# ---------------------------------------------------------------------------------------------
# The load generator (runs in its own process: gevent monkey-patches everything it touches)
# ---------------------------------------------------------------------------------------------


def _generate(args: argparse.Namespace) -> None:
    from gevent import monkey

    monkey.patch_all()
    import socket

    import gevent

    request = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    records: list[tuple[int, float]] = []  # (status or 0 for timeout / -1 for socket error, latency s)
    stop_at = time.monotonic() + args.duration

    def exchange(sock: socket.socket) -> int:
        sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            (int(line.split(b":", 1)[1]) for line in lines[1:] if line.lower().startswith(b"content-length:")), 0
        )
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            body += chunk
        if any(line.lower() == b"connection: close" for line in lines[1:]):
            raise _Closed(status)
        return status

    class _Closed(Exception):  # noqa: N818 - not an error: the server closed after a full answer
        def __init__(self, status: int) -> None:
            self.status = status

    def connect() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def one(sock: socket.socket | None, due: float) -> tuple[socket.socket | None, int]:
        """One request on ``sock`` (or a new connection); returns the socket to reuse (None: closed)."""
        try:
            with gevent.Timeout(TIMEOUT_S):
                sock = sock or connect()
                status = exchange(sock)
        except _Closed as closed:
            status, sock = closed.status, _close(sock)
        except gevent.Timeout:
            status, sock = 0, _close(sock)
        except OSError:
            status, sock = -1, _close(sock)
        records.append((status, time.monotonic() - due))
        return sock, status

    def _close(sock: socket.socket | None) -> socket.socket | None:
        """Close ``sock``; None, the connection to use next time (a new one)."""
        if sock is not None:
            sock.close()
        return None

    if args.generate == "closed":

        def client() -> None:
            sock = None
            while time.monotonic() < stop_at:
                sock, status = one(sock, time.monotonic())
                if status == -1:
                    gevent.sleep(0.01)  # a refused connect must not spin
            _close(sock)

        gevent.joinall([gevent.spawn(client) for _ in range(args.connections)], timeout=args.duration + TIMEOUT_S + 5)
    else:  # open loop: requests fall due at a fixed rate, each on an idle connection or a new one
        idle: list[socket.socket] = []
        busy = 0
        not_sent = 0

        def send(due: float) -> None:
            nonlocal busy
            busy += 1
            sock, _ = one(idle.pop() if idle else None, due)
            busy -= 1
            if sock is not None:
                idle.append(sock)

        started = time.monotonic()
        interval = 1.0 / args.rate
        n = 0
        greenlets = []
        while True:
            due = started + n * interval
            if due >= stop_at:
                break
            delay = due - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            if busy >= args.connections:
                not_sent += 1  # the generator's own connection cap: counted, never silently dropped
            else:
                greenlets.append(gevent.spawn(send, due))
            n += 1
        gevent.joinall(greenlets, timeout=TIMEOUT_S + 5)
        for sock in idle:
            sock.close()
        records.extend((-2, 0.0) for _ in range(not_sent))
    json.dump({"duration_s": args.duration, "records": records}, sys.stdout)


# ---------------------------------------------------------------------------------------------
# Running the scenarios
# ---------------------------------------------------------------------------------------------


def pct(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000, 1)


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    records = raw["records"]
    duration = raw["duration_s"]
    ok = [lat for status, lat in records if status == 200]
    shed = [lat for status, lat in records if status == 503]
    codes: dict[str, int] = {}
    for status, _ in records:
        key = {0: "client_timeout", -1: "socket_error", -2: "not_sent"}.get(status, str(status))
        codes[key] = codes.get(key, 0) + 1
    return {
        "goodput_rps": round(len(ok) / duration, 1),
        "answered_rps": round(sum(1 for s, _ in records if s > 0) / duration, 1),
        "codes": codes,
        "ok_p50_ms": pct(ok, 0.5), "ok_p99_ms": pct(ok, 0.99), "ok_max_ms": pct(ok, 1.0),
        "shed_p50_ms": pct(shed, 0.5), "shed_p95_ms": pct(shed, 0.95), "shed_max_ms": pct(shed, 1.0),
    }


def generate(port: int, kind: str, duration: float, connections: int, rate: float = 0.0) -> dict[str, Any]:
    command = [sys.executable, __file__, "--generate", kind, "--port", str(port), "--duration", str(duration),
               "--connections", str(connections), "--rate", str(rate)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=True)
    return summarize(json.loads(proc.stdout))


WRK_LUA = """
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) counts = {} end
response = function(status, headers, body) counts[tostring(status)] = (counts[tostring(status)] or 0) + 1 end
done = function(summary, latency, requests)
  local agg = {}
  for _, t in ipairs(threads) do for k, v in pairs(t:get("counts")) do agg[k] = (agg[k] or 0) + v end end
  local parts = {}
  for k, v in pairs(agg) do table.insert(parts, string.format('"%s":%d', k, v)) end
  io.write(string.format('WRKJSON {"duration_us":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d,"codes":{%s}}\\n', summary.duration, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout, latency:percentile(50),
    latency:percentile(99), latency.max, table.concat(parts, ",")))
end
"""


def run_wrk(url: str, connections: int, duration: float, lua: Path) -> dict[str, Any]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
               "-s", str(lua), url]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        return {"error": (proc.stdout + proc.stderr)[-300:]}
    data: dict[str, Any] = json.loads(line[len("WRKJSON "):])
    seconds = data["duration_us"] / 1e6
    return {
        "connections": connections, "goodput_rps": round(data["codes"].get("200", 0) / seconds, 1),
        "codes": data["codes"], "timeouts": data["timeout"],
        "socket_errors": data["connect"] + data["read"] + data["write"],
        "p50_ms": data["p50_us"] / 1000, "p99_ms": data["p99_us"] / 1000, "max_ms": data["max_us"] / 1000,
    }


def run_mode(mode: str, args: argparse.Namespace, work: Path, capacity: float | None) -> dict[str, Any]:
    from tests.support.harness import start_service

    env = {"ADMISSION_ENABLED": "true" if mode == "adaptive" else "false", **args.env}
    a = start_service("a", work)
    try:
        b = start_service("b", work, a_port=a.port, env=env)
        try:
            generate(b.port, "closed", 2.0, 8)  # warm-up: imports, pools
            result: dict[str, Any] = {"mode": mode, "closed": [], "open": [], "wrk": []}
            for conns in args.connections:
                row = {"connections": conns, **generate(b.port, "closed", args.duration, conns)}
                result["closed"].append(row)
                print(f"  {mode:<8} closed c={conns:<5} {_line(row)}", flush=True)
            capacity = capacity or result["closed"][0]["goodput_rps"]
            for factor in args.rates:
                rate = max(1.0, capacity * factor)
                row = {"factor": factor, "rate": round(rate, 1),
                       **generate(b.port, "open", args.duration, 1024, rate)}
                result["open"].append(row)
                print(f"  {mode:<8} open {factor:g}x ({rate:.0f}/s) {_line(row)}", flush=True)
            for conns in args.wrk_connections:
                row = run_wrk(f"{b.url}{PATH}", conns, args.duration, work / "codes.lua")
                result["wrk"].append(row)
                print(f"  {mode:<8} wrk c={conns:<5} {row}", flush=True)
            after = [b.get(PATH, timeout=TIMEOUT_S).status_code for _ in range(5)]
            result["after_overload"] = after
            result["limit_moves"] = [line.split(" INFO ", 1)[-1][:90] for line in b.log_lines()
                                     if "admission limit " in line]
            result["capacity_rps"] = capacity
            result["shed_by_reason"] = {
                line.split('"')[1]: float(line.rsplit(" ", 1)[1])
                for line in b.get("/metrics").text.splitlines() if line.startswith("admission_shed_total{")
            }
            print(f"  {mode:<8} shed by reason {result['shed_by_reason']}; limit moves {result['limit_moves'][:6]}")
            return result
        finally:
            b.cleanup()
    finally:
        a.cleanup()


def _line(row: dict[str, Any]) -> str:
    return (f"goodput {row['goodput_rps']:>7.1f}/s  200 p50/p99 {row['ok_p50_ms']}/{row['ok_p99_ms']} ms"
            f"  503 p50/p95 {row['shed_p50_ms']}/{row['shed_p95_ms']} ms  {row['codes']}")


def draw(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    styles = {"adaptive": ("tab:green", "-", "o"), "static": ("tab:red", "--", "s")}
    for res in results:
        color, line, marker = styles[res["mode"]]
        xs = [r["connections"] for r in res["closed"]]
        axes[0].plot(xs, [r["goodput_rps"] for r in res["closed"]], line, color=color, marker=marker,
                     label=f"{res['mode']}: goodput (200/s)")
        axes[0].plot(xs, [r["answered_rps"] for r in res["closed"]], ":", color=color, marker=marker,
                     alpha=0.5, label=f"{res['mode']}: all answers/s")
        axes[1].plot(xs, [r["ok_p99_ms"] or 0 for r in res["closed"]], line, color=color, marker=marker,
                     label=f"{res['mode']}: 200 p99")
        axes[1].plot(xs, [r["shed_p95_ms"] or 0 for r in res["closed"]], ":", color=color, marker=marker,
                     alpha=0.6, label=f"{res['mode']}: 503 p95")
        fx = [r["factor"] for r in res["open"]]
        axes[2].plot(fx, [r["goodput_rps"] for r in res["open"]], line, color=color, marker=marker,
                     label=f"{res['mode']}: goodput")
        axes[2].plot(fx, [r["rate"] for r in res["open"]], ":", color="gray", alpha=0.4)
    axes[0].set(xscale="log", xlabel="connections (closed loop)", ylabel="requests/s", title="goodput vs offered load")
    axes[1].set(xscale="log", yscale="log", xlabel="connections (closed loop)", ylabel="ms",
                title="latency of answers (200 p99, 503 p95)")
    axes[2].set(xlabel="offered rate / capacity (open loop)", ylabel="requests/s",
                title="open loop: goodput (grey: offered)")
    for axis in axes:
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    for axis in axes[:2]:
        ticks = results[0]["closed"]
        axis.set_xticks([r["connections"] for r in ticks], [str(r["connections"]) for r in ticks])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--duration", type=float)
    parser.add_argument("--modes", default="adaptive,static")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for B")
    parser.add_argument("--connections-list", help="closed-loop connection counts, comma-separated")
    parser.add_argument("--generate", choices=("closed", "open"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        args.duration = args.duration or 5.0
        _generate(args)
        return 0
    args.duration = args.duration or (2.0 if args.quick else 8.0)
    args.env = dict(item.split("=", 1) for item in args.env)
    default_conns = "16,256" if args.quick else "16,64,256,512,1024"
    args.connections = [int(c) for c in (args.connections_list or default_conns).split(",")]
    args.rates = [1.0, 4.0] if args.quick else [1.0, 2.0, 4.0]
    args.wrk_connections = [] if args.quick else [16, 512]
    args.out = args.out or REPO / "bench" / "results" / ("quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="echo-overload-"))
    (work / "codes.lua").write_text(WRK_LUA)
    load_before = os.getloadavg()
    print(f"overload bench: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} before start", flush=True)
    begun = time.monotonic()
    results: list[dict[str, Any]] = []
    capacity = None
    for mode in args.modes.split(","):
        res = run_mode(mode, args, work, capacity)
        capacity = capacity or res["capacity_rps"]  # the same offered rates for both modes
        results.append(res)
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "-m", "bench.overload", *(argv if argv is not None else sys.argv[1:])]),
        "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "duration_s": args.duration, "results": results, "elapsed_s": round(time.monotonic() - begun, 1),
    }
    (args.out / "overload.json").write_text(json.dumps(report, indent=2) + "\n")
    title = (f"B /call-echo under overload, production defaults; {os.cpu_count()} CPUs shared by generator, A, B"
             f" (and other work: load avg {load_before[0]:.1f}); {args.duration:g}s per point")
    draw(results, args.out / "overload.png", title)
    print(f"results: {args.out / 'overload.json'}, {args.out / 'overload.png'} ({report['elapsed_s']} s)")
    broken = [r["mode"] for r in results if not any(row["goodput_rps"] > 0 for row in r["closed"])]
    if broken:
        print(f"HARNESS BROKEN: no successful call in mode(s) {broken}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
