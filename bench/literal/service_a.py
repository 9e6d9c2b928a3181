"""Service A as the design document describes it, taken literally: a BENCHMARK BASELINE ONLY.

This is not the project's Service A (that is ``service_a/app.py``). It is the minimal code a
reader of the original design document would write: a Flask app on Flask's default
development server (``app.run``, threaded), ``logging.basicConfig`` with the document's format
and one log line per request from before/after_request hooks. ``bench/run.py --modes literal``
starts it so the issue's "literal implementation" baseline is measured in the same run as
production mode. Port: ``SERVICE_A_PORT`` (default 8080, as in the document).
"""

from __future__ import annotations

import logging
import os
import time

from flask import Flask, Response, g, jsonify, request

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
logger = logging.getLogger("service_a")

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


@app.get("/echo")
def echo() -> Response:
    return jsonify({"echo": request.args.get("msg", "")})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("SERVICE_A_PORT", "8080")))
