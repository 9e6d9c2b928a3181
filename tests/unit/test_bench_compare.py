"""bench/compare.py turns measured medians into the issue's met / not met verdicts correctly."""

from __future__ import annotations

from typing import Any

import pytest

from bench import compare, run


def table(prod: dict[str, float], bare: dict[str, float], aio: dict[str, float]) -> dict[str, dict[str, Any]]:
    def modes(load: str, metric: str) -> dict[str, Any]:
        return {name: {metric: figures[load]} for name, figures in (("prod", prod), ("bare", bare), ("aiohttp", aio))}

    return {
        "chain_c64": modes("chain_c64", "rps"),
        "chain_c1": modes("chain_c1", "p50_ms"),
        "echo_c64": modes("echo_c64", "rps"),
    }


def result(mode: str, errors: int = 0, non_2xx: int = 0) -> run.LoadResult:
    return run.LoadResult(
        mode=mode, target="chain_c64", connections=64, round=1, requests=100, duration_s=1.0, rps=100.0,
        p50_ms=1.0, p99_ms=2.0, max_ms=3.0, errors=errors, non_2xx=non_2xx, generator="wrk",
    )


def by_name(verdicts: list[dict[str, Any]]) -> dict[str, str]:
    return {v["criterion"]: v["result"] for v in verdicts}


def test_a_production_mode_past_every_bound_meets_every_criterion() -> None:
    got = by_name(compare.verdicts(
        table({"chain_c64": 1400, "chain_c1": 0.8, "echo_c64": 6600},
              {"chain_c64": 1000, "chain_c1": 1.0, "echo_c64": 5000},
              {"chain_c64": 3000, "chain_c1": 0.5, "echo_c64": 9000}),
        [result("prod")],
    ))
    assert set(got.values()) == {"met"}


def test_each_bound_is_checked_in_its_own_direction() -> None:
    verdicts = compare.verdicts(
        table({"chain_c64": 1290, "chain_c1": 0.81, "echo_c64": 5000},  # just short of 1.3x, 0.8x and 1.3x
              {"chain_c64": 1000, "chain_c1": 1.0, "echo_c64": 5000},
              {"chain_c64": 3300, "chain_c1": 0.5, "echo_c64": 9000}),  # 1290 / 3300 < 0.4
        [result("bare", non_2xx=1)],
    )
    assert set(by_name(verdicts).values()) == {"not met"}
    p50 = next(v for v in verdicts if v["criterion"].startswith("chain c1"))
    assert p50["ratio"] == 0.81


def test_a_mode_that_did_not_run_gives_no_verdict() -> None:
    partial = {load: {"prod": row["prod"]} for load, row in table(
        {"chain_c64": 1, "chain_c1": 1, "echo_c64": 1}, {"chain_c64": 1, "chain_c1": 1, "echo_c64": 1},
        {"chain_c64": 1, "chain_c1": 1, "echo_c64": 1}).items()}
    got = compare.verdicts(partial, [])
    assert [v["result"] for v in got[:-1]] == ["n/a"] * 4
    assert got[-1]["result"] == "met"  # no run, so no error either


def test_loads_can_be_chosen_and_unknown_ones_are_refused() -> None:
    """``--loads echo_c64`` measures only that load; a misspelt load name stops the run at once."""
    assert [load[0] for load in compare.parse_args(["--loads", "echo_c64"]).loads] == ["echo_c64"]
    assert [load[0] for load in compare.parse_args([]).loads] == ["chain_c64", "chain_c1", "echo_c64"]
    with pytest.raises(SystemExit):
        compare.parse_args(["--loads", "echo_c46"])
