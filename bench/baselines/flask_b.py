"""Bare Flask Service B for the comparison baseline: BENCHMARK CODE ONLY, not the project's B.

``GET /call-echo?msg=...`` calls A's ``/echo`` through one plain urllib3 connection pool per
worker (keep-alive, a 2 s timeout, no retries, breaker or deadline) and answers the project's
JSON: 200 ``{"msg", "echo_response"}``, 400 ``Missing 'msg' parameter``, 503 ``Service A
unavailable``. No logging or metrics. A's address: ``SERVICE_A_URL``. bench/compare.py runs it as::

    cd bench/baselines && SERVICE_A_URL=http://127.0.0.1:8080 \\
        granian --interface wsgi --workers 2 --no-log --port 8081 flask_b:app
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlencode, urlsplit

import urllib3
from flask import Flask, Response, jsonify, request

_A = urlsplit(os.environ.get("SERVICE_A_URL", "http://127.0.0.1:8080"))
# Sized like granian's WSGI thread pool (up to 256 threads a worker): a thread never waits for a socket.
POOL = urllib3.HTTPConnectionPool(
    _A.hostname or "127.0.0.1", _A.port or 80, maxsize=256, retries=False, timeout=urllib3.Timeout(total=2.0)
)

app = Flask(__name__)


@app.get("/health")
def health() -> Response:
    return jsonify({"status": "ok"})


@app.get("/call-echo")
def call_echo() -> Response | tuple[Response, int]:
    msg = request.args.get("msg")
    if not msg:
        return jsonify({"error": "Missing 'msg' parameter"}), 400
    try:
        response = POOL.request("GET", "/echo?" + urlencode({"msg": msg}))
    except urllib3.exceptions.HTTPError as exc:
        return jsonify({"error": "Service A unavailable", "details": type(exc).__name__}), 503
    if response.status != 200:
        return jsonify({"error": "Service A unavailable", "details": f"HTTP {response.status}"}), 503
    return jsonify({"msg": msg, "echo_response": json.loads(response.data)})
