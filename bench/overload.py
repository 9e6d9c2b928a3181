"""Overload benchmark (issue 15): goodput and latency of admitted calls versus offered load.

    python -m bench.overload                 # ~6 min: results in bench/results/overload.{json,png}
    python -m bench.overload --quick         # ~1 min smoke run of every code path

Starts A and B in production mode (gunicorn, defaults) twice: with adaptive admission (the default)
and with only the static cap (``ADMISSION_ENABLED=false``: UPSTREAM_MAX_IN_FLIGHT=256 per process).
Against B's ``/call-echo`` it runs, per mode:

* a closed loop (each connection sends its next request when the last answer arrived) at
  16 -> 1,024 connections, driven by wrk (``-t1``, 5 s timeout);
* an open loop at a fixed rate of 1x, 2x and 4x capacity (capacity: the adaptive run's goodput at
  16 connections as the open loop's own Python generator reaches it in a closed loop), where
  latency counts from when a request was *due*, so a slow server cannot slow the offered load
  down (no coordinated omission).

The closed loop is wrk, with latency *per status* (200 vs 503) on the client's clock: the Lua
script ``WRK_LUA`` puts each request's send time (CLOCK_MONOTONIC microseconds) into its
X-Request-ID, B echoes that ID on every answer (503 sheds included), and ``response()`` files
now - send time into a histogram per status code, printed by ``done()`` as one ``STATUSJSON`` line
(``wrk_row`` shapes it). It used to be this file's Python generator, but the generator shares the
2 CPUs with A and B and spent about 3.5x wrk's CPU per request, so its latencies described the
generator as much as the services. wrk's ``client_timeout`` is its own count (answers later than
5 s plus requests it saw outstanding past 5 s); wrk does not abandon those requests.

The open loop needs a fixed rate, which wrk cannot offer: there the load generator is this file run
as ``--generate open`` in its own process (gevent, raw keep-alive sockets, one record per request:
status, latency). ``--generate closed`` is its closed-loop twin: its goodput at 16 connections is
the open loop's 1x, a rate the generator itself can offer. Each row records the CPU seconds A, B
and the client spent on it (``cpu_s``). Every process started is stopped in a ``finally`` block.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.support.harness import ServiceProcess

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


WRK_LUA = r"""
-- bench/overload.py's wrk script: latency per status code, measured on the client's clock.
-- Each request carries its send time (CLOCK_MONOTONIC, us) in X-Request-ID; B echoes the ID on
-- every answer, 503 sheds included. Histograms are FLAT tables of numbers,
-- lat[status * 10000 + bucket] = count (thread:get() of nested tables or large arrays segfaults
-- wrk); bucket = us / 500 below 1 s, then 2000 + (us - 1 s) / 10 ms.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } overload_timespec;
int clock_gettime(int clk, overload_timespec *tp);
]]
local ts = ffi.new("overload_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)  -- 1: CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end
local function bucket(us)
  if us < 0 then us = 0 end
  local b
  if us < 1000000 then b = math.floor(us / 500) else b = 2000 + math.floor((us - 1000000) / 10000) end
  if b > 9999 then b = 9999 end
  return b
end
local function upper_ms(b)  -- a bucket's upper edge
  if b < 2000 then return (b + 1) * 0.5 end
  return 1000 + (b - 2000 + 1) * 10
end
local function request_id(headers)
  local id = headers["X-Request-ID"] or headers["x-request-id"]
  if id then return id end
  for name, value in pairs(headers) do
    if string.lower(name) == "x-request-id" then return value end
  end
end

local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) lat = {} ; unmatched = {} ; n = 0 end
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["X-Request-ID"] = string.format("t%.0f-%d", now_us(), n)})
end
response = function(status, headers, body)
  local id = request_id(headers)
  local sent = id and tonumber(string.match(id, "^t(%d+)%-%d+$"))
  if not sent then
    unmatched[status] = (unmatched[status] or 0) + 1
    return
  end
  local key = status * 10000 + bucket(now_us() - sent)
  lat[key] = (lat[key] or 0) + 1
end
done = function(summary, latency, requests)
  local hist, counts, missing, total_missing = {}, {}, {}, 0
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get("lat")) do
      local code, b = math.floor(key / 10000), key % 10000
      hist[code] = hist[code] or {}
      hist[code][b] = (hist[code][b] or 0) + count
      counts[code] = (counts[code] or 0) + count
    end
    for code, count in pairs(thread:get("unmatched")) do
      missing[code] = (missing[code] or 0) + count
      counts[code] = (counts[code] or 0) + count
      total_missing = total_missing + count
    end
  end
  local parts = {}
  for code, count in pairs(counts) do
    local h = hist[code]
    local stats = '"p50_ms":null,"p95_ms":null,"p99_ms":null,"max_ms":null'
    if h then
      local keys, timed = {}, 0
      for b, c in pairs(h) do keys[#keys + 1] = b ; timed = timed + c end
      table.sort(keys)
      local function p(q)
        local seen = 0
        for _, b in ipairs(keys) do
          seen = seen + h[b]
          if seen >= q * timed then return upper_ms(b) end
        end
        return upper_ms(keys[#keys])
      end
      stats = string.format('"p50_ms":%.1f,"p95_ms":%.1f,"p99_ms":%.1f,"max_ms":%.1f',
        p(0.5), p(0.95), p(0.99), upper_ms(keys[#keys]))
    end
    table.insert(parts, string.format('"%d":{"n":%d,"unmatched":%d,%s}', code, count, missing[code] or 0, stats))
  end
  io.write(string.format('STATUSJSON {"duration_us":%d,"requests":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"unmatched":%d,"codes":{%s}}\n',
    summary.duration, summary.requests, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency.max, total_missing,
    table.concat(parts, ",")))
end
"""


def wrk_row(data: dict[str, Any], connections: int) -> dict[str, Any]:
    """A closed-loop row, with the generator rows' keys, from WRK_LUA's STATUSJSON ``data``."""
    seconds = data["duration_us"] / 1e6 or 1.0
    by_status: dict[str, dict[str, Any]] = data["codes"]
    ok, shed = by_status.get("200", {}), by_status.get("503", {})
    socket_errors = data["connect"] + data["read"] + data["write"]
    codes: dict[str, int] = {code: by_status[code]["n"] for code in sorted(by_status, key=int)}
    codes.update(client_timeout=data["timeout"], socket_error=socket_errors)
    return {
        "connections": connections, "client": "wrk",
        "goodput_rps": round(ok.get("n", 0) / seconds, 1),
        "answered_rps": round(sum(v["n"] for v in by_status.values()) / seconds, 1),
        "codes": codes,
        "ok_p50_ms": ok.get("p50_ms"), "ok_p99_ms": ok.get("p99_ms"), "ok_max_ms": ok.get("max_ms"),
        "shed_p50_ms": shed.get("p50_ms"), "shed_p95_ms": shed.get("p95_ms"), "shed_max_ms": shed.get("max_ms"),
        "timeouts": data["timeout"], "socket_errors": socket_errors,
        "p50_ms": round(data["p50_us"] / 1000, 2), "p99_ms": round(data["p99_us"] / 1000, 2),
        "max_ms": round(data["max_us"] / 1000, 2),
        "unmatched": data["unmatched"], "latency_by_status": by_status,
    }


def run_wrk(url: str, connections: int, duration: float, lua: Path, wrk: str = "wrk") -> dict[str, Any]:
    """A closed loop of ``connections`` against ``url`` with wrk and WRK_LUA (in the file ``lua``)."""
    command = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
               "-s", str(lua), url]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30, check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("STATUSJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no STATUSJSON line (exit {proc.returncode}): "
                           f"{proc.stdout[-500:]} {proc.stderr[-500:]}")
    return wrk_row(json.loads(line[len("STATUSJSON "):]), connections)


def with_cpu(a: ServiceProcess, b: ServiceProcess, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``load()``'s row plus ``cpu_s``: the CPU seconds A, B and the client (a finished child) spent on it."""
    from bench.run import group_cpu_seconds

    def now() -> tuple[float, float, float]:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return group_cpu_seconds(a), group_cpu_seconds(b), kids.ru_utime + kids.ru_stime

    before = now()
    row = load()
    spent = zip(("a", "b", "client"), now(), before, strict=True)
    row["cpu_s"] = {name: round(after - first, 2) for name, after, first in spent}
    return row


def run_mode(mode: str, args: argparse.Namespace, work: Path, capacity: float | None) -> dict[str, Any]:
    from tests.support.harness import start_service

    env = {"ADMISSION_ENABLED": "true" if mode == "adaptive" else "false", **args.env}
    a = start_service("a", work)
    try:
        b = start_service("b", work, a_port=a.port, env=env)
        try:
            url, lua = f"{b.url}{PATH}", work / "status.lua"
            run_wrk(url, 8, 2.0, lua, args.wrk)  # warm-up: imports, pools
            result: dict[str, Any] = {"mode": mode, "closed": [], "open": []}
            for conns in args.connections:
                row = with_cpu(a, b, functools.partial(run_wrk, url, conns, args.duration, lua, args.wrk))
                result["closed"].append(row)
                print(f"  {mode:<8} closed c={conns:<5} {_line(row)}", flush=True)
            # The open loop's 1x: what the Python generator itself reaches against B in a closed loop
            # of 16 connections. wrk's goodput is more than the generator can offer at all.
            capacity = capacity or generate(b.port, "closed", args.duration, 16)["goodput_rps"]
            for factor in args.rates:
                rate = max(1.0, capacity * factor)
                row = {"factor": factor, "rate": round(rate, 1), "client": "python",
                       **with_cpu(a, b, functools.partial(generate, b.port, "open", args.duration, 1024, rate))}
                result["open"].append(row)
                print(f"  {mode:<8} open {factor:g}x ({rate:.0f}/s) {_line(row)}", flush=True)
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
    cpu = "/".join(f"{row['cpu_s'][n]:.1f}" for n in ("a", "b", "client")) if "cpu_s" in row else "?"
    unmatched = f"  unmatched {row['unmatched']}" if row.get("unmatched") else ""
    return (f"goodput {row['goodput_rps']:>7.1f}/s  200 p50/p99 {row['ok_p50_ms']}/{row['ok_p99_ms']} ms"
            f"  503 p50/p95 {row['shed_p50_ms']}/{row['shed_p95_ms']} ms  {row['codes']}"
            f"  CPU s A/B/{row.get('client', '?')} {cpu}{unmatched}")


def _nan(value: float | None) -> float:
    """A figure to plot: None (no such answers in the row) leaves a gap, not a drop to zero."""
    return float("nan") if value is None else value


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
        axes[1].plot(xs, [_nan(r["ok_p99_ms"]) for r in res["closed"]], line, color=color, marker=marker,
                     label=f"{res['mode']}: 200 p99")
        axes[1].plot(xs, [_nan(r["shed_p95_ms"]) for r in res["closed"]], ":", color=color, marker=marker,
                     alpha=0.6, label=f"{res['mode']}: 503 p95")
        fx = [r["factor"] for r in res["open"]]
        axes[2].plot(fx, [r["goodput_rps"] for r in res["open"]], line, color=color, marker=marker,
                     label=f"{res['mode']}: goodput")
        axes[2].plot(fx, [r["rate"] for r in res["open"]], ":", color="gray", alpha=0.4)
    axes[0].set(xscale="log", xlabel="connections (closed loop)", ylabel="requests/s", title="goodput vs offered load")
    axes[1].axhline(300, color="gray", linewidth=0.8, alpha=0.6, label="issue 15: 200 p99 <= 300 ms")
    axes[1].axhline(100, color="gray", linewidth=0.8, linestyle=":", alpha=0.6, label="issue 15: 503 p95 <= 100 ms")
    axes[0].set_ylim(bottom=0)  # from zero: a 10 % drop should look like one
    axes[2].set_ylim(bottom=0)
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
    from bench.run import ensure_wrk

    args.wrk = ensure_wrk()
    if args.wrk is None:
        print("overload bench needs wrk for its closed loop: install it (apt-get install wrk) and put it on PATH",
              file=sys.stderr)
        return 1
    args.out = args.out or REPO / "bench" / "results" / ("quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="echo-overload-"))
    (work / "status.lua").write_text(WRK_LUA)
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
    title = (f"B /call-echo under overload, production defaults; {os.cpu_count()} CPUs shared by the client"
             f" (closed: wrk, latency per status on its clock; open: Python generator), A, B"
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
