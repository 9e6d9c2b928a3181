"""bench/overload.py shapes wrk's STATUSJSON line (latency per status code) into a closed-loop row."""

from __future__ import annotations

from typing import Any

from bench import overload


def status_json(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "duration_us": 2_000_000, "requests": 1300, "connect": 1, "read": 2, "write": 0, "timeout": 3,
        "p50_us": 12_345, "p99_us": 250_000, "max_us": 1_200_000, "unmatched": 4,
        "codes": {
            "503": {"n": 300, "unmatched": 0, "p50_ms": 1.5, "p95_ms": 4.0, "p99_ms": 6.5, "max_ms": 9.0},
            "200": {"n": 1000, "unmatched": 4, "p50_ms": 20.5, "p95_ms": 80.0, "p99_ms": 120.0, "max_ms": 1010.0},
        },
    }
    data.update(changes)
    return data


def test_goodput_counts_only_200_and_answered_counts_every_status() -> None:
    row = overload.wrk_row(status_json(), 256)
    assert row["connections"] == 256
    assert row["client"] == "wrk"
    assert row["goodput_rps"] == 500.0
    assert row["answered_rps"] == 650.0
    assert row["codes"] == {"200": 1000, "503": 300, "client_timeout": 3, "socket_error": 3}
    assert list(row["codes"])[:2] == ["200", "503"]  # status codes in order, then the client's errors
    assert (row["timeouts"], row["socket_errors"], row["unmatched"]) == (3, 3, 4)


def test_percentiles_come_per_status_and_overall_from_wrk() -> None:
    row = overload.wrk_row(status_json(), 16)
    assert (row["ok_p50_ms"], row["ok_p99_ms"], row["ok_max_ms"]) == (20.5, 120.0, 1010.0)
    assert (row["shed_p50_ms"], row["shed_p95_ms"], row["shed_max_ms"]) == (1.5, 4.0, 9.0)
    assert (row["p50_ms"], row["p99_ms"], row["max_ms"]) == (12.35, 250.0, 1200.0)


def test_a_run_without_sheds_or_answers_has_no_percentiles_for_them() -> None:
    only_200 = overload.wrk_row(status_json(codes={"200": status_json()["codes"]["200"]}), 16)
    assert only_200["shed_p50_ms"] is None and only_200["shed_max_ms"] is None
    assert only_200["codes"]["client_timeout"] == 3

    nothing = overload.wrk_row(status_json(codes={}, duration_us=0), 16)
    assert nothing["goodput_rps"] == 0.0 and nothing["answered_rps"] == 0.0
    assert nothing["ok_p99_ms"] is None

