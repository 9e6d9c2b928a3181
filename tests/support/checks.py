"""Checks several real-process test modules make on services and on the answers they gave."""

from __future__ import annotations

import re

import requests

from tests.support.harness import ServiceProcess
from tests.support.loadgen import Result

__all__ = ["assert_accounted", "echo_requests", "get_once"]

_ECHO_ACCESS = re.compile(r" GET /echo (\d{3}) ([\d.]+)ms")


def get_once(service: ServiceProcess, path: str) -> requests.Response:
    """One GET on a connection closed afterwards (an idle keep-alive would slow the service's shutdown)."""
    return requests.get(service.url + path, timeout=5, headers={"Connection": "close"})


def echo_requests(a: ServiceProcess) -> list[tuple[int, float]]:
    """(status, latency ms) of every ``/echo`` A logged."""
    return [(int(m.group(1)), float(m.group(2))) for line in a.log_lines() if (m := _ECHO_ACCESS.search(line))]


def assert_accounted(results: list[Result]) -> None:
    """Every answer is a correct 200 or a 503 JSON error: no reset, no 500, no malformed body."""
    assert results, "the load generator sent nothing"
    broken = [r for r in results if r.status not in (200, 503) or not r.valid]
    assert not broken, f"{len(broken)} bad answers, first: {broken[:3]}"
