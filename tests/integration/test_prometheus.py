"""A real Prometheus scrapes the production services and runs the project's rules and dashboard.

Debian's ``prometheus`` (scripts/system-packages.sh installs it) listens on a free loopback port,
scrapes A and B (gunicorn, free ports) every second under a short paced load, and evaluates
deploy/prometheus/rules/ every second. Then every recording rule and every query of the Grafana
dashboard (template variables resolved through the same API, as Grafana resolves them) must
return data, and no alert may fire on the healthy system. Last, A is stopped: the alerts about
A must then start (pending), so the rules are shown to see the real metrics, not just to be quiet.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.requires import DEV_REQUIREMENTS

pytest.importorskip("yaml", reason=DEV_REQUIREMENTS)
import yaml

from tests.support.harness import REPO, free_port, wait_until
from tests.support.loadgen import LoadGenerator

RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "echo-system.json"
JOBS = {"a": "service-a", "b": "service-b"}
# Families that exist only once B balances over several A replicas (the replicas work). A query
# that uses one is skipped only while B's /metrics has none of them; every other must return data.
REPLICA_FAMILIES = (
    "upstream_endpoint_requests_total", "upstream_endpoint_usable", "upstream_endpoint_ejections_total",
    "upstream_hedges_total",
)
# What Grafana puts in for $__rate_interval at a 1 s scrape interval is a few seconds; a little
# more keeps every window holding several scrapes on this busy machine.
RATE_INTERVAL = "15s"


class PrometheusAPI:
    """The HTTP API of one Prometheus server."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: Any) -> Any:
        response = requests.get(self.url + path, params=params, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self.get(f"/api/v1/label/{label}/values", **{"match[]": match}))


@pytest.fixture
def prometheus(tmp_path: Path, chain: Any) -> Iterator[tuple[PrometheusAPI, Any, Any]]:
    """Real A and B under gunicorn, and a real Prometheus scraping them with the project's rules."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (scripts/system-packages.sh prometheus installs it)")
    a, b = chain(mode="gunicorn")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_DIR / "*.rules.yml")],
        "scrape_configs": [
            {"job_name": JOBS[s.name], "static_configs": [{"targets": [f"127.0.0.1:{s.port}"]}]} for s in (a, b)
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    api = PrometheusAPI(f"http://127.0.0.1:{port}")
    try:
        wait_until(lambda: _ready(api.url) or proc.poll() is not None, 30, "Prometheus to be ready")
        assert proc.poll() is None, log_path.read_text()
        yield api, a, b
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _ready(url: str) -> bool:
    try:
        return requests.get(url + "/-/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def recording_rules() -> list[tuple[str, str]]:
    """(record name, expression) of every recording rule the project ships."""
    rules = []
    for path in sorted(RULES_DIR.glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += [(rule["record"], rule["expr"]) for rule in group["rules"] if "record" in rule]
    return rules


def alert_names() -> list[str]:
    return [
        rule["alert"]
        for path in sorted(RULES_DIR.glob("*.rules.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"] if "alert" in rule
    ]


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every query on the dashboard, rows' nested panels included."""
    queries = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            queries += [(inner["title"], target["expr"]) for target in inner.get("targets", [])]
    return queries


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with Grafana's variables replaced (``$name`` and ``${name}``), longest name first."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    assert "$" not in expr, f"unresolved variable in {expr}"
    return expr


def resolve_variables(api: PrometheusAPI, board: dict[str, Any], skip: set[str]) -> dict[str, str]:
    """Each query variable's values from ``label_values(selector, label)``, as a regex of them all.

    That is what a multi-value variable set to "All" (or to every value) becomes in a query.
    A variable in ``skip`` (replicas not there yet) resolves to ``.*``, its ``allValue``.
    """
    values = {"__rate_interval": RATE_INTERVAL}
    for variable in board["templating"]["list"]:
        if variable["type"] == "datasource":
            assert variable["query"] == "prometheus"
            continue
        assert variable["type"] == "query", variable
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        selector = substitute(match.group(1), values)
        if variable["name"] in skip:
            values[variable["name"]] = variable["allValue"]
            continue
        found = api.label_values(match.group(2), selector)
        assert found, f"template variable ${variable['name']} resolves to nothing ({selector})"
        values[variable["name"]] = "|".join(promql_regex_literal(v) for v in found)
    return values


def promql_regex_literal(value: str) -> str:
    """``value`` as a regex matching only itself, written inside a PromQL string (as Grafana escapes)."""
    return re.sub(r"([\\.+*?^$()\[\]{}|])", r"\\\\\1", value)


def test_rules_and_dashboard_return_data_and_nothing_fires_on_the_healthy_system(prometheus):
    """Every recording rule and dashboard query has data under load; no alert fires; stopping A starts alerts."""
    api, a, b = prometheus
    load = LoadGenerator(b.port, clients=4, duration_s=90, rate_per_client=10, timeout_s=5).start()
    try:
        # Both targets scraped, and the rules evaluated over at least a few scrapes of the load.
        wait_until(lambda: len(api.query('up{job=~"service-a|service-b"} == 1')) == 2, 30, "both targets up")
        wait_until(lambda: bool(api.query('job:http_requests:rate5m{job="service-b"} > 0')), 30, "B's request rate")
        wait_until(lambda: bool(api.query('job:http_requests:rate5m{job="service-a"} > 0')), 30, "A's request rate")
        wait_until(lambda: bool(api.query(f'sum(increase(upstream_requests_total[{RATE_INTERVAL}])) > 20')),
                   30, "several scrapes with load in the window")
        b_families = requests.get(b.url + "/metrics", timeout=5).text
        replicas_present = any(f"\n{name}" in b_families for name in REPLICA_FAMILIES)

        def without_data() -> list[str]:
            return [record for record, _ in recording_rules() if not api.query(record)]

        # Each rule group has its own evaluation offset within the interval: wait for all of them.
        try:
            wait_until(lambda: not without_data(), 20, "every recorded series")
        except AssertionError:
            raise AssertionError(f"recording rules without data: {without_data()}") from None
        assert not [expr for _, expr in recording_rules() if not api.query(expr)]

        board = dashboard()
        values = resolve_variables(api, board, skip=set() if replicas_present else {"endpoint"})
        assert set(values) >= {"job", "instance"}
        assert sorted(values["job"].split("|")) == ["service-a", "service-b"]
        skipped, checked, empty = [], 0, []
        for title, expr in dashboard_queries(board):
            if not replicas_present and any(name in expr for name in REPLICA_FAMILIES):
                skipped.append(title)
                continue
            checked += 1
            if not api.query(substitute(expr, values)):
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
        assert checked >= 18 and set(skipped) <= {"Calls by replica and outcome", "Replica usable",
                                                  "Ejections and hedges"}

        # Every rule evaluates without error, and nothing fires while the system is healthy.
        groups = api.get("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert sorted(r["name"] for r in rules if r["type"] == "recording") == sorted(n for n, _ in recording_rules())
        assert len([r for r in rules if r["type"] == "alerting"]) == len(alert_names())
        assert all(rule["health"] == "ok" for rule in rules), [r for r in rules if r["health"] != "ok"]
        assert api.query('ALERTS{alertstate="firing"}') == []
        ok = sum(1 for r in load.results if r.status == 200)
        assert ok > 100 and ok >= 0.99 * len(load.results), (
            f"the system was not healthy under the load: {[r for r in load.results if r.status != 200][:5]}")
    finally:
        load.stop()
        load.join()

    # A stops: B's calls fail, so the alerts about A must start (pending: their `for` is minutes).
    a.terminate()
    failing = LoadGenerator(b.port, clients=4, duration_s=20, timeout_s=5).start()
    try:
        wanted = {"ServiceAUnreachableFromB", "TargetDown"}

        def pending() -> set[str]:
            return {alert["metric"]["alertname"] for alert in api.query("ALERTS")}

        wait_until(lambda: wanted <= pending(), 25, f"alerts {sorted(wanted)} once A is down")
    finally:
        failing.stop()
        failing.join()
