"""Schemathesis fuzzing of both live services (real gunicorn processes) against their own OpenAPI documents.

Each run loads the document the service serves at ``/openapi.json`` and, with a bounded number of
examples per operation, checks: no undocumented 5xx, every status/content type/body/header conforms
to the document, invalid input is rejected with a 4xx, undocumented methods get 405 with ``Allow``.
On top of schemathesis' own checks, every response logged in the run's HAR file is inspected: error
bodies are JSON with an ``error`` string.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import free_port
from tests.support.requires import DEV_REQUIREMENTS

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
if not Path(SCHEMATHESIS).exists():
    pytest.skip(DEV_REQUIREMENTS, allow_module_level=True)
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))  # per operation; bounded so a run takes seconds
SEED = os.environ.get("FUZZ_SEED", "20260601")  # fixed for reproducible runs; set FUZZ_SEED to explore
RUN_TIMEOUT_S = 180

CONFIG = """
[generation]
# Unknown query parameters and headers are ignored by design (HTTP), so "extra parameter accepted"
# would be a false alarm.
allow-extra-parameters = false
database = "none"

[checks.negative_data_rejection]
# 414 (msg or request line too long) and 431 (headers too large) are the documented rejections too.
expected-statuses = ["400", "404", "405", "414", "431"]

[checks.not_a_server_error]
expected-statuses = {not_a_server_error}
"""


def run_schemathesis(base_url: str, work: Path, allowed_statuses: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """Run ``schemathesis run`` against ``base_url``; its console output and the HAR entries of the run."""
    config = work / "schemathesis.toml"
    config.write_text(CONFIG.format(not_a_server_error=json.dumps(allowed_statuses)), encoding="utf-8")
    har = work / "run.har"
    command = [
        SCHEMATHESIS, "--config-file", str(config), "run", f"{base_url}/openapi.json", "--url", base_url,
        "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", SEED, "--workers", "1",
        "--request-timeout", "10", "--no-color", "--output-truncate", "true",
        "--report", "har", "--report-har-path", str(har),
    ]
    result = subprocess.run(  # a fixed command line, loopback target
        command, cwd=work, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"schemathesis found problems (exit {result.returncode}):\n{output[-6000:]}"
    entries = json.loads(har.read_text(encoding="utf-8"))["log"]["entries"]
    return output, entries


def assert_error_bodies_are_json(entries: list[dict[str, Any]]) -> dict[int, int]:
    """Every 4xx/5xx in the HAR entries is JSON with an ``error`` string; returns the count per status."""
    counts: dict[int, int] = {}
    for entry in entries:
        status = entry["response"]["status"]
        counts[status] = counts.get(status, 0) + 1
        if status < 400:
            continue
        text = entry["response"]["content"].get("text", "")
        if entry["request"]["method"] == "HEAD":
            continue
        body = json.loads(text)
        assert isinstance(body.get("error"), str), f"{entry['request']['url'][:200]} -> {status} {text[:200]}"
    return counts


def report(name: str, entries: list[dict[str, Any]], counts: dict[int, int]) -> None:
    print(f"\n[fuzz] {name}: {len(entries)} requests, statuses {dict(sorted(counts.items()))}")


# A caller's X-Request-Timeout-Ms this small may have run out before A could start (issue 15: A then
# answers 504 "Deadline exceeded" without doing the work); any larger budget must never see a 5xx.
EXPIRED_ON_ARRIVAL_MS = 50


def _expired_on_arrival(entry: dict[str, Any]) -> bool:
    """A 504 "Deadline exceeded" for a request whose propagated budget was at most a few milliseconds."""
    headers = {h["name"].lower(): h["value"] for h in entry["request"].get("headers", [])}
    budget = headers.get("x-request-timeout-ms", "")
    text = entry["response"]["content"].get("text", "")
    return (
        entry["response"]["status"] == 504 and budget.isdigit() and int(budget) <= EXPIRED_ON_ARRIVAL_MS
        and json.loads(text).get("error") == "Deadline exceeded"
    )


def test_fuzz_service_a_conforms_to_its_document(services, tmp_path):
    """Schemathesis finds no 5xx (but the documented 504 for a budget spent before A could start), no
    schema violation and no non-JSON error on a live Service A."""
    a = services("a", mode="gunicorn")
    _, entries = run_schemathesis(a.url, tmp_path, ["2XX", "3XX", "4XX", "504"])
    counts = assert_error_bodies_are_json(entries)
    report("service A", entries, counts)
    assert len(entries) >= 4 * 10, "too few requests: schemathesis did not really exercise A"
    assert 400 in counts and 405 in counts, "the run never reached the error paths"
    server_errors = [e for e in entries if e["response"]["status"] >= 500 and not _expired_on_arrival(e)]
    assert not server_errors, [(e["request"]["url"][:120], e["response"]["status"]) for e in server_errors[:3]]


def test_fuzz_service_b_with_a_up_has_no_server_error(chain, tmp_path):
    """Schemathesis through a live B to a live A: no 5xx at all, and every answer matches B's document."""
    a, b = chain(mode="gunicorn")
    _, entries = run_schemathesis(b.url, tmp_path, ["2XX", "3XX", "4XX"])
    counts = assert_error_bodies_are_json(entries)
    report("service B, A up", entries, counts)
    assert counts.get(200, 0) >= 10, "B should have echoed through A many times"
    assert not [status for status in counts if status >= 500]
    a_echoes = [line for line in a.log_lines() if " GET /echo 200 " in line]
    assert a_echoes, "B's successful answers must have come from the real A"


def test_fuzz_service_b_with_a_down_answers_only_documented_503(services, tmp_path):
    """With A not running, fuzzing B yields only B's documented 503 (JSON, per schema) besides 2xx/4xx."""
    b = services("b", mode="gunicorn", a_port=free_port(), env={"UPSTREAM_TIMEOUT_SECONDS": "0.5"})
    _, entries = run_schemathesis(b.url, tmp_path, ["2XX", "3XX", "4XX", "503"])
    counts = assert_error_bodies_are_json(entries)
    report("service B, A down", entries, counts)
    assert counts.get(503, 0) >= 5, "the A-unavailable path was not exercised"
    assert set(status for status in counts if status >= 500) == {503}
    assert counts.get(200, 0) >= 1, "B's own probes keep answering 200 while A is down"
