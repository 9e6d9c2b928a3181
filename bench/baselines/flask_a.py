"""Bare Flask Service A for the comparison baseline: BENCHMARK CODE ONLY, not the project's A.

The least a Flask service needs to answer like A: ``GET /health`` and ``GET /echo?msg=...`` with
the project's JSON (``{"echo": msg}``), no logging, metrics, request IDs or deadlines. It runs
on granian's WSGI interface, as bench/compare.py starts it::

    cd bench/baselines && granian --interface wsgi --workers 2 --no-log --port 8080 flask_a:app
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.get("/health")
def health() -> Response:
    return jsonify({"status": "ok"})


@app.get("/echo")
def echo() -> Response:
    return jsonify({"echo": request.args.get("msg", "")})
