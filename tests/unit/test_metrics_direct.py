"""Under a gevent worker the request families' samples go straight to the multiprocess files: same /metrics.

Each run is its own process (prometheus_client picks multiprocess storage at import time, and the
direct path is only taken once gevent has patched threading), with its own PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import os, signal, sys
signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # an ignored SIGCHLD inherited from the test run would reap the child
if sys.argv[1] == "direct":
    from gevent import monkey
    monkey.patch_thread()  # what the direct path looks for; fork and waitpid below stay the plain OS calls
from echokit import metrics as metrics_module
from echokit.metrics import Metrics, count, observe, set_gauge

metrics = Metrics(os.environ["PROMETHEUS_MULTIPROC_DIR"])

def served(method, route, status, seconds, finish=True):
    metrics.request_started()
    if finish:
        metrics.request_finished(method, route, status, seconds)

served("GET", "/echo", 200, 0.0004)
served("GET", "/echo", 200, 0.003)
served("HEAD", "/echo", 200, 0.2)
served("BREW", "unmatched", 405, 11.0)  # past the last bucket: only +Inf and the sum
served("GET", "/health", 200, 0.0)
served("GET", "/echo", 200, 0.01, finish=False)  # still in flight
pid = os.fork()  # a worker forked after the app was built: the child writes its own files
if pid == 0:
    served("GET", "/echo", 200, 0.002)
    served("GET", "/echo", 200, 0.004, finish=False)
    os._exit(0)
os.waitpid(pid, 0)
served("GET", "/echo", 200, 0.05)
up = metrics.upstream  # what B's client and admission gate write through the same helpers
count(up.calls.labels("success"))
count(up.calls.labels("timeout"), 2.0)
observe(up.latency.labels("success"), 0.0123)
set_gauge(up.breaker_state.labels("open"), 1.0)
set_gauge(up.breaker_state.labels("open"), 0.0)
set_gauge(up.endpoint_usable.labels("127.0.0.1:1"), 1.0)
assert metrics_module._DIRECT._on == (sys.argv[1] == "direct")
sys.stdout.write(metrics.exposition()[0].decode())
"""


def _run(mode: str, tmp_path: Path) -> str:
    directory = tmp_path / mode
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_direct_path_writes_what_the_public_api_writes(tmp_path):
    """Counts, sums, every bucket and the in-flight gauge read the same, across a fork too."""
    direct, public = _run("direct", tmp_path), _run("public", tmp_path)
    assert 'http_requests_total{method="GET",route="/echo",status="200"} 4.0' in public.splitlines()
    assert "http_requests_in_flight 2.0" in public.splitlines()
    assert 'upstream_requests_total{outcome="timeout"} 2.0' in public.splitlines()
    # The collector lists families in the order it finds the files; every line is the same.
    assert sorted(direct.splitlines()) == sorted(public.splitlines())
