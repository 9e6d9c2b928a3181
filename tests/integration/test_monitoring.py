"""The monitoring artefacts checked offline: Prometheus rules and their unit tests, runbook links,
Compose's monitoring profile, Grafana provisioning and the Kubernetes ServiceMonitor example.

promtool comes with Debian's ``prometheus`` package and docker-compose with its own (both
installed by scripts/system-packages.sh); a test that needs a missing one skips and says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.requires import DEV_REQUIREMENTS

pytest.importorskip("yaml", reason=DEV_REQUIREMENTS)
import yaml

from echokit.probes import PROBE_PATHS
from tests.support.deploy import COMPOSE, KUSTOMIZE_DIR, compose, render_kustomization
from tests.support.harness import REPO

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.rules.yml"))
RULE_TESTS = PROMETHEUS_DIR / "tests" / "alerts.test.yml"
OPERATIONS = REPO / "docs" / "operations.md"
GRAFANA_DIR = REPO / "deploy" / "grafana"
SERVICE_MONITOR = KUSTOMIZE_DIR / "monitoring" / "servicemonitor.yaml"
# What the issue asks an on-call person to be alerted about, by the alert's name.
REQUIRED_ALERTS = {
    "CallEchoErrorBudgetBurnFast", "CallEchoErrorBudgetBurnSlow", "CallEchoLatencyHigh", "ServiceAUnreachableFromB",
    "CircuitBreakerOpen", "RetryBudgetExhausted", "UpstreamReplicaEjected", "TargetDown",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (scripts/system-packages.sh prometheus installs it)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, check=False)


def alerts() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"] if "alert" in rule
    ]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown``."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def test_rules_and_the_compose_prometheus_config_pass_promtool_check():
    """`promtool check rules` accepts every rule file and `check config` the Compose profile's config."""
    rules = promtool("check", "rules", *map(str, RULE_FILES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert f"{len(RULE_FILES)} rule files found" in config.stdout


def test_promtool_unit_tests_pass_and_fail_when_an_alert_changes(tmp_path):
    """`promtool test rules` passes, and fails once an alert's threshold no longer matches its tests."""
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, broken)
    alerts_file = broken / "rules" / "alerts.rules.yml"
    alerts_file.write_text(alerts_file.read_text().replace("> 0.5\n", "> 5\n"))
    result = promtool("test", "rules", str(broken / "tests" / "alerts.test.yml"))
    assert result.returncode != 0 and "ServiceAUnreachableFromB" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    """Each alert the rules define is expected to fire in one promtool case and to stay quiet in another."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names >= REQUIRED_ALERTS
    assert firing == names and quiet == names, (names - firing, names - quiet)


def test_every_alert_has_a_summary_a_description_and_a_runbook_section():
    """Each alert says what is wrong, in words and with its values, and links its section of the runbook."""
    anchors = github_anchors(OPERATIONS.read_text())
    for rule in alerts():
        annotations = rule["annotations"]
        assert annotations["summary"] and "{{" in annotations["description"], rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert (REPO / path) == OPERATIONS and anchor == rule["alert"].lower(), annotations["runbook_url"]
        assert anchor in anchors, f"docs/operations.md has no section for {rule['alert']}"


def test_rules_and_dashboard_leave_out_exactly_the_probe_routes():
    """Every route matcher in the rules and the dashboard names exactly the routes probes and scrapers call."""
    texts = [path.read_text() for path in RULE_FILES]
    texts.append(json.dumps(json.loads((GRAFANA_DIR / "dashboards" / "echo-system.json").read_text())))
    matchers = [m for text in texts for m in re.findall(r'route[!=]~\\?"([^"\\]*)', text)]
    assert len(matchers) >= 10
    assert all(set(m.split("|")) == PROBE_PATHS for m in matchers), set(matchers)


def test_compose_monitoring_profile_validates_and_mounts_the_project_files():
    """`docker-compose --profile monitoring config` accepts the file; Prometheus and Grafana get the repo's files."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (scripts/system-packages.sh docker-compose installs it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    result = subprocess.run([tool, "-f", str(COMPOSE), "--profile", "monitoring", "config", "--services"],
                            capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"service-a", "service-b", "prometheus", "grafana"}
    services = compose()["services"]
    # Optional: `docker compose up` without the profile starts only the two services.
    assert {name: spec.get("profiles") for name, spec in services.items()} == {
        "service-a": None, "service-b": None, "prometheus": ["monitoring"], "grafana": ["monitoring"],
    }
    mounts = {name: dict(v.split(":")[:2] for v in services[name]["volumes"]) for name in ("prometheus", "grafana")}
    for name, volumes in mounts.items():
        assert all((REPO / source).is_dir() for source in volumes), (name, volumes)
    config_dir = mounts["prometheus"]["./deploy/prometheus"]
    assert f"--config.file={config_dir}/prometheus.yml" in services["prometheus"]["command"]
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"service-a", "service-b"}  # the job names the rules and the dashboard use
    for job, (service, port) in {"service-a": ("service-a", "8080"), "service-b": ("service-b", "8081")}.items():
        [sd] = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [service] and str(sd["port"]) == port and service in services
        assert port in [str(p) for p in services[service].get("expose", [])] + [
            str(p).rsplit(":", 1)[-1] for p in services[service].get("ports", [])
        ]


def test_grafana_is_provisioned_with_the_dashboard_and_a_prometheus_data_source():
    """The provisioning points at the mounted dashboard folder and the Compose Prometheus; the JSON is one dashboard."""
    services = compose()["services"]
    grafana_mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    [datasource] = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "echo-system.yml").read_text())[
        "providers"
    ]
    assert grafana_mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert grafana_mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    dashboard = json.loads((GRAFANA_DIR / "dashboards" / Path(home).name).read_text())
    assert dashboard["uid"] and {v["name"] for v in dashboard["templating"]["list"]} >= {"datasource", "job"}
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and panel["description"], panel["title"]


def test_service_monitor_example_selects_both_services_by_their_port_name():
    """The ServiceMonitor picks exactly the base's two Services, on a port they name, outside the base."""
    monitor = yaml.safe_load(SERVICE_MONITOR.read_text())
    assert monitor["kind"] == "ServiceMonitor" and monitor["apiVersion"] == "monitoring.coreos.com/v1"
    kustomization = yaml.safe_load((KUSTOMIZE_DIR / "kustomization.yaml").read_text())
    assert not any("monitoring" in resource for resource in kustomization["resources"])  # needs the operator's CRDs
    selector = monitor["spec"]["selector"]
    picked = []
    for obj in render_kustomization(KUSTOMIZE_DIR):
        if obj["kind"] != "Service":
            continue
        labels = obj["metadata"]["labels"]
        if selector["matchLabels"].items() <= labels.items() and all(
            labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"]
        ):
            picked.append(obj)
            assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in obj["spec"]["ports"]}
    # The job label the Operator gives is the Service's name: the jobs the rules use.
    assert sorted(s["metadata"]["name"] for s in picked) == ["service-a", "service-b"]
