"""Service B as the design document describes it, taken literally: a BENCHMARK BASELINE ONLY.

This is not the project's Service B (that is ``service_b/app.py``, with a pooled urllib3
client, deadlines, retries and a circuit breaker). It is the minimal code a reader of the
original design document would write: a Flask app on Flask's default development server
(``app.run``, threaded), ``requests.get(..., timeout=2)`` per call to A (a new connection every
time), the document's log format with one line per request plus one per outbound call, and the
document's JSON bodies: 200 ``{"msg", "echo_response"}``, 400 ``Missing 'msg' parameter``, 503
``Service A unavailable`` with ``details``. ``bench/run.py --modes literal`` starts it as the
issue's baseline. Port: ``SERVICE_B_PORT`` (default 8081); A: ``SERVICE_A_URL``.
"""

from __future__ import annotations

import logging
import os
import time

import requests
from flask import Flask, Response, g, jsonify, request

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
logger = logging.getLogger("service_b")

A_URL = os.environ.get("SERVICE_A_URL", "http://127.0.0.1:8080").rstrip("/")
TIMEOUT_S = 2

app = Flask(__name__)


@app.before_request
def start_timer() -> None:
    g.start = time.perf_counter()


@app.after_request
def log_request(response: Response) -> Response:
    latency_ms = (time.perf_counter() - g.start) * 1000
    logger.info("%s %s %s %.2fms", request.method, request.path, response.status_code, latency_ms)
    return response


@app.get("/health")
def health() -> Response:
    return jsonify({"status": "ok"})


@app.get("/call-echo")
def call_echo() -> Response | tuple[Response, int]:
    msg = request.args.get("msg")
    if not msg:
        return jsonify({"error": "Missing 'msg' parameter"}), 400
    url = f"{A_URL}/echo"
    try:
        response = requests.get(url, params={"msg": msg}, timeout=TIMEOUT_S)
        response.raise_for_status()
        echo_response = response.json()
    except requests.exceptions.Timeout as exc:
        logger.error("outbound GET %s timeout=%ss failed: %s", url, TIMEOUT_S, type(exc).__name__)
        return jsonify({"error": "Service A unavailable", "details": f"Timeout after {TIMEOUT_S}s"}), 503
    except requests.exceptions.ConnectionError as exc:
        logger.error("outbound GET %s timeout=%ss failed: %s", url, TIMEOUT_S, type(exc).__name__)
        return jsonify({"error": "Service A unavailable", "details": f"Connection error: {exc}"}), 503
    except (requests.exceptions.RequestException, ValueError) as exc:
        logger.error("outbound GET %s timeout=%ss failed: %s", url, TIMEOUT_S, type(exc).__name__)
        return jsonify({"error": "Service A unavailable", "details": str(exc)}), 503
    logger.info("outbound GET %s timeout=%ss ok %s", url, TIMEOUT_S, response.status_code)
    return jsonify({"msg": msg, "echo_response": echo_response})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("SERVICE_B_PORT", "8081")))
