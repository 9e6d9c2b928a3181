"""Deployment artefacts (Dockerfile, compose.yaml, deploy/kubernetes/) checked offline.

No Docker engine or cluster runs here, so: the Kubernetes objects are rendered (real kustomize
when `kubectl kustomize` exists, else the small renderer below) and validated against the
Kubernetes OpenAPI schemas; compose.yaml goes through Debian's `docker-compose config`; every
port, probe path, env var name, grace period and command in the three files is compared with
what the services' own code reads (nothing here repeats those values as literals); and the
Dockerfile's exact gunicorn command line is started as a process and served traffic.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask

from tests.support.requires import DEV_REQUIREMENTS

pytest.importorskip("kubernetes_validate", reason=DEV_REQUIREMENTS)
pytest.importorskip("yaml", reason=DEV_REQUIREMENTS)
import kubernetes_validate
import yaml

from echokit.servers.gunicorn_config import ensure_metrics_dir, gunicorn_settings, service_from_argv
from echokit.settings import ENV_VARS, service_a_settings, service_b_settings
from service_a.app import create_app as create_a
from service_b.app import create_app as create_b
from tests.support.deploy import COMPOSE, KUSTOMIZE_DIR, compose, render_kustomization
from tests.support.harness import REPO, ServiceProcess, free_port, port_is_closed

if sys.version_info >= (3, 11):
    import tomllib
else:  # requirements.txt installs tomli on 3.10
    import tomli as tomllib

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROCFILE = REPO / "Procfile.prod"
SERVICES = ("service_a", "service_b")
SETTINGS: dict[str, Callable[..., Any]] = {"service_a": service_a_settings, "service_b": service_b_settings}
APPS: dict[str, Callable[..., Flask]] = {"service_a": create_a, "service_b": create_b}
# Variables the Python interpreter (not the services) reads; the image sets them for itself.
INTERPRETER_VARS = ("PATH", "VIRTUAL_ENV")


# ---------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword.upper(), args.strip()))
    return stages


def instruction(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for key, args in stage if key == keyword]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(v) for v in value]


def runtime_stage() -> list[tuple[str, str]]:
    return dockerfile_stages()[-1]


def image_env() -> dict[str, str]:
    """The runtime stage's ENV (PATH left out: it names the image's own virtual environment)."""
    env: dict[str, str] = {}
    for args in instruction(runtime_stage(), "ENV"):
        for word in shlex.split(args):
            name, _, value = word.partition("=")
            env[name] = value
    return env


def image_command(args: list[str] | None = None) -> list[str]:
    """ENTRYPOINT + CMD, or ENTRYPOINT + ``args`` (what Compose's command / Kubernetes' args replace)."""
    stage = runtime_stage()
    entrypoint = exec_form(instruction(stage, "ENTRYPOINT")[-1])
    cmd = exec_form(instruction(stage, "CMD")[-1])
    return entrypoint + (cmd if args is None else args)


def image_healthcheck() -> list[str]:
    args = instruction(runtime_stage(), "HEALTHCHECK")[-1]
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
    assert match, f"HEALTHCHECK is not in exec form: {args}"
    return exec_form(match.group(1))


def build_app_dir(target: Path) -> Path:
    """The runtime stage's WORKDIR as the image has it: only what its own COPY lines put there."""
    for args in instruction(runtime_stage(), "COPY"):
        if args.startswith("--from"):
            continue  # the virtual environment: here, this venv with the project installed
        *sources, dest = shlex.split(args)
        for source in sources:
            to = target / dest / Path(source).name if dest.endswith("/") else target / dest
            to.parent.mkdir(parents=True, exist_ok=True)
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, to)
            else:
                shutil.copy2(REPO / source, to)
    return target


def image_uid() -> int:
    user = instruction(runtime_stage(), "USER")[-1]
    return int(user.split(":")[0])


# ---------------------------------------------------------------- Compose and Kubernetes


def compose_service(service: str) -> dict[str, Any]:
    """The Compose service whose command runs ``service`` ("service_a" or "service_b")."""
    found = [
        (name, spec) for name, spec in compose()["services"].items()
        if "build" in spec and service_from_argv(image_command(spec.get("command"))) == service
    ]
    assert len(found) == 1, f"expected one Compose service running {service}, got {found}"
    return {"name": found[0][0], **found[0][1]}


def real_kustomize() -> list[str] | None:
    """`kubectl kustomize` if a kubectl with kustomize built in is installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True, timeout=30, check=False)
    return [kubectl, "kustomize"] if probe.returncode == 0 else None


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    return render_kustomization(KUSTOMIZE_DIR)


def k8s_object(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}"
    return found[0]


def k8s_deployment(objects: list[dict[str, Any]], service: str) -> dict[str, Any]:
    """The Deployment whose container runs ``service`` (found by its args, not by its name)."""
    found = [
        o for o in objects
        if o["kind"] == "Deployment" and service_from_argv(image_command(container(o).get("args"))) == service
    ]
    assert len(found) == 1, f"expected one Deployment running {service}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment).get("env", [])}


def k8s_service_for(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, Any]:
    """The Service whose selector picks ``deployment``'s pods."""
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    found = [
        o for o in objects
        if o["kind"] == "Service" and o["spec"]["selector"].items() <= pod_labels.items()
    ]
    assert len(found) == 1
    return found[0]


def named_port(deployment: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container(deployment)["ports"] if p.get("name") == port))


# ---------------------------------------------------------------- settings the services read


def effective_env(overrides: dict[str, str]) -> dict[str, str]:
    """What a container sees: the image's ENV, then the Compose / Kubernetes environment."""
    return {**image_env(), **overrides}


def graceful_timeout(service: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> int:
    # gunicorn_settings fills in PROMETHEUS_MULTIPROC_DIR in os.environ if unset: keep it scoped.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    return gunicorn_settings(image_command([f"{service}.app:create_app()"]), env).graceful_timeout


def read_by_serving(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> bool:
    """Whether gunicorn.conf.py's code (echokit.servers.gunicorn_config) reads ``name``: set it, see the effect."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    if name == "PROMETHEUS_MULTIPROC_DIR":
        probe = str(tmp_path / "probe")
        return ensure_metrics_dir({name: probe}) == probe
    probe_count = 7  # no default equals it, so only a variable that is read can produce it
    config = gunicorn_settings(["gunicorn", "service_a.app:create_app()"], {name: str(probe_count)})
    return probe_count in (config.workers, config.worker_connections)


def assert_names_are_read(env: dict[str, str], where: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in env:
        if name in ENV_VARS or name in INTERPRETER_VARS or name.startswith(("PYTHON", "OTEL_")):
            continue
        assert read_by_serving(name, monkeypatch, tmp_path), f"{where} sets {name}, which nothing reads"


# ================================================================ schema validation


def test_every_kubernetes_manifest_validates_against_the_openapi_schemas(k8s):
    """Every rendered object is valid for the newest Kubernetes the installed schemas know, strictly."""
    version = kubernetes_validate.latest_version()
    kinds = sorted(o["kind"] for o in k8s)
    assert kinds == sorted(
        ["Deployment", "Deployment", "Service", "Service", "PodDisruptionBudget", "PodDisruptionBudget",
         "HorizontalPodAutoscaler"]
    )
    for obj in k8s:
        kubernetes_validate.validate(obj, version, strict=True)
    # A typo'd field must be caught, or this test proves nothing.
    broken = json.loads(json.dumps(k8s_deployment(k8s, "service_a")))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_the_small_renderer_agrees_with_real_kustomize(k8s):
    """`kubectl kustomize deploy/kubernetes` renders exactly the objects the tests check."""
    command = real_kustomize()
    if command is None:
        pytest.skip("no kubectl with kustomize installed: only the test's own renderer ran")
    out = subprocess.run([*command, str(KUSTOMIZE_DIR)], capture_output=True, text=True, timeout=60, check=True)
    real = [doc for doc in yaml.safe_load_all(out.stdout) if doc]

    def key(obj: dict[str, Any]) -> tuple[str, str]:
        return obj["kind"], obj["metadata"]["name"]

    assert sorted(real, key=key) == sorted(k8s, key=key)


def test_compose_file_passes_docker_compose_config(tmp_path):
    """A real Compose implementation accepts compose.yaml, and rejects it with an unknown key."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (scripts/system-packages.sh docker-compose installs it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    ok = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                        timeout=60, env=env, check=False)
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    scale: 3\n", "    scale: 3\n    replicaz: 3\n"))
    bad = subprocess.run([tool, "-f", str(broken), "config", "-q"], capture_output=True, text=True,
                         timeout=60, env=env, check=False)
    assert bad.returncode != 0 and "replicaz" in bad.stderr


# ================================================================ consistency with the code


def test_commands_are_the_production_gunicorn_command(k8s):
    """Image, Compose and Kubernetes run exactly Procfile.prod's gunicorn command for each service."""
    procfile = {  # "name: exec command" (exec: honcho's shell hands signals straight to the server)
        name: command.strip().removeprefix("exec ")
        for name, command in (line.split(":", 1) for line in PROCFILE.read_text().splitlines() if line.strip())
    }
    assert image_command() == shlex.split(procfile["service_a"])  # the image's default is A
    for service in SERVICES:
        spec = compose_service(service)
        assert image_command(spec["command"]) == shlex.split(procfile[service])
        pod = container(k8s_deployment(k8s, service))
        assert "command" not in pod, "Kubernetes must keep the image's ENTRYPOINT"
        assert image_command(pod["args"]) == shlex.split(procfile[service])


def test_ports_match_the_ports_the_services_listen_on(k8s):
    """EXPOSE, Compose's ports and every Kubernetes port point at the port the settings give."""
    defaults = effective_env({})
    exposed = {int(p) for args in instruction(runtime_stage(), "EXPOSE") for p in args.split()}
    assert exposed == {SETTINGS[s](defaults).server.port for s in SERVICES}
    for service in SERVICES:
        spec = compose_service(service)
        server = SETTINGS[service](effective_env(spec["environment"])).server
        assert server.host == "0.0.0.0"
        published = [int(str(p).split(":")[-1].split("/")[0]) for p in spec.get("ports", [])]
        assert [int(p) for p in spec.get("expose", [])] + published == [server.port]
        deployment = k8s_deployment(k8s, service)
        server = SETTINGS[service](effective_env(container_env(deployment))).server
        assert server.host == "0.0.0.0"
        assert [p["containerPort"] for p in container(deployment)["ports"]] == [server.port]
        pod = container(deployment)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert named_port(deployment, pod[probe]["httpGet"]["port"]) == server.port
        target = k8s_service_for(k8s, deployment)["spec"]["ports"][0]["targetPort"]
        assert named_port(deployment, target) == server.port
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) == server.port
    # Only B is published on the host; A is reached by name inside the Compose network.
    assert "ports" not in compose_service("service_a") and compose_service("service_b")["ports"]


def test_b_finds_a_by_service_name(k8s):
    """B's SERVICE_A_URL names A's Compose service / Kubernetes Service and the port A serves on."""
    a_spec, b_spec = compose_service("service_a"), compose_service("service_b")
    url = urlsplit(service_b_settings(effective_env(b_spec["environment"])).upstream.url)
    a_port = service_a_settings(effective_env(a_spec["environment"])).server.port
    assert (url.hostname, url.port) == (a_spec["name"], a_port)
    assert b_spec["depends_on"] == {a_spec["name"]: {"condition": "service_healthy"}}
    a_service = k8s_service_for(k8s, k8s_deployment(k8s, "service_a"))
    url = urlsplit(service_b_settings(effective_env(container_env(k8s_deployment(k8s, "service_b")))).upstream.url)
    assert (url.hostname, url.port) == (a_service["metadata"]["name"], a_service["spec"]["ports"][0]["port"])


def test_b_sees_a_s_pods_through_a_headless_service(k8s):
    """A's Service is headless (DNS gives the pod addresses) and B re-resolves it, so B balances over pods."""
    a_service = k8s_service_for(k8s, k8s_deployment(k8s, "service_a"))
    assert a_service["spec"].get("clusterIP") == "None"
    upstream = service_b_settings(effective_env(container_env(k8s_deployment(k8s, "service_b")))).upstream
    assert upstream.resolve_interval_s > 0
    assert [urlsplit(u).hostname for u in upstream.urls] == [a_service["metadata"]["name"]]
    compose = service_b_settings(effective_env(compose_service("service_b")["environment"])).upstream
    assert compose.resolve_interval_s > 0 and [urlsplit(u).hostname for u in compose.urls] == ["service-a"]


def test_every_env_var_set_is_one_the_services_read(k8s, monkeypatch, tmp_path):
    """No file sets a variable nothing reads (a typo would be silently ignored), and all values load."""
    assert_names_are_read(image_env(), "Dockerfile", monkeypatch, tmp_path)
    for service in SERVICES:
        compose_env = compose_service(service)["environment"]
        k8s_env = container_env(k8s_deployment(k8s, service))
        for where, env in (("compose.yaml", compose_env), ("deploy/kubernetes", k8s_env)):
            assert_names_are_read(env, where, monkeypatch, tmp_path)
            SETTINGS[service](effective_env(env))  # raises SettingsError on a value the service refuses
    assert not read_by_serving("WEB_CONCURENCY", monkeypatch, tmp_path)  # the check can fail


def test_probes_use_routes_the_apps_serve(k8s):
    """Liveness is /health, readiness the app's /ready, and Docker's health check asks /health too."""
    for service in SERVICES:
        deployment = k8s_deployment(k8s, service)
        pod = container(deployment)
        app = APPS[service](SETTINGS[service]({}))
        routes = {rule.rule for rule in app.url_map.iter_rules()}
        paths = {probe: pod[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert set(paths.values()) <= routes
        health = app.view_functions["probes.health"]
        ready = app.view_functions["probes.ready"]
        assert app.view_functions[app.url_map.bind("").match(paths["livenessProbe"])[0]] is health
        assert app.view_functions[app.url_map.bind("").match(paths["startupProbe"])[0]] is health
        assert app.view_functions[app.url_map.bind("").match(paths["readinessProbe"])[0]] is ready
        scrape = deployment["spec"]["template"]["metadata"]["annotations"]
        assert scrape["prometheus.io/scrape"] == "true" and scrape["prometheus.io/path"] in routes
        assert compose_service(service)["healthcheck"]["test"] == ["CMD", *image_healthcheck()]


def test_grace_periods_outlast_the_drain(k8s, monkeypatch, tmp_path):
    """SIGKILL comes after gunicorn's graceful_timeout (drain delay + drain timeout + 1) in both runtimes."""
    for service in SERVICES:
        deployment = k8s_deployment(k8s, service)
        env = effective_env(container_env(deployment))
        settings = SETTINGS[service](env).server
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > graceful_timeout(
            service, env, monkeypatch, tmp_path
        )
        # Kubernetes notices the 503 from /ready within the drain delay, before the listener closes.
        ready = container(deployment)["readinessProbe"]
        assert settings.drain_delay_s > 0
        assert ready["periodSeconds"] * ready["failureThreshold"] <= settings.drain_delay_s
        spec = compose_service(service)
        stop = int(str(spec["stop_grace_period"]).removesuffix("s"))
        assert stop > graceful_timeout(service, effective_env(spec["environment"]), monkeypatch, tmp_path)


def test_pods_are_locked_down_and_write_only_to_tmp(k8s):
    """Non-root (the image's own UID), read-only root, no privilege escalation, no capabilities."""
    uid = image_uid()
    assert uid != 0
    for service in SERVICES:
        deployment = k8s_deployment(k8s, service)
        pod_spec = deployment["spec"]["template"]["spec"]
        assert pod_spec["securityContext"]["runAsNonRoot"] is True
        assert pod_spec["securityContext"]["runAsUser"] == uid
        sc = container(deployment)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec["volumes"]}
        metrics_dir = effective_env(container_env(deployment))["PROMETHEUS_MULTIPROC_DIR"]
        assert metrics_dir.startswith("/tmp/") and "emptyDir" in volumes[mounts["/tmp"]]
        spec = compose_service(service)
        assert spec["read_only"] is True and "/tmp" in spec["tmpfs"]
        assert spec["cap_drop"] == ["ALL"] and "no-new-privileges:true" in spec["security_opt"]


def test_replicas_autoscaler_and_disruption_budget_fit_together(k8s):
    """A runs 3 (Deployment, HPA floor, Compose scale) and keeps 2 through drains; B runs 2 and keeps 1."""
    a, b = k8s_deployment(k8s, "service_a"), k8s_deployment(k8s, "service_b")
    assert (a["spec"]["replicas"], b["spec"]["replicas"]) == (3, 2)
    assert compose_service("service_a")["scale"] == 3
    [hpa] = [o for o in k8s if o["kind"] == "HorizontalPodAutoscaler"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": a["metadata"]["name"]}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert hpa["spec"]["minReplicas"] == a["spec"]["replicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "cpu" in container(a)["resources"]["requests"]  # HPA utilisation is a share of the request
    for deployment, kept in ((a, 2), (b, 1)):
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"].items()
        [pdb] = [o for o in k8s if o["kind"] == "PodDisruptionBudget"
                 and o["spec"]["selector"]["matchLabels"].items() <= pod_labels]
        assert pdb["spec"]["minAvailable"] == kept
        assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]  # else no node could ever be drained


def test_image_tag_and_build_context_match_the_project(k8s):
    """Compose and Kubernetes run the tag of pyproject's version, and the context has every COPY source."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    image = f"{tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['name']}:{version}"
    for service in SERVICES:
        assert compose_service(service)["image"] == image
        assert container(k8s_deployment(k8s, service))["image"] == image
    for stage in dockerfile_stages():
        for args in instruction(stage, "COPY"):
            if args.startswith("--from"):
                continue
            for source in shlex.split(args)[:-1]:
                matches = list(REPO.glob(source))
                assert matches, f"COPY {source}: no such file"
                assert all(in_build_context(m.relative_to(REPO).as_posix()) for m in matches), source


def in_build_context(path: str) -> bool:
    """Whether .dockerignore lets ``path`` through (Docker's rule: the last matching pattern wins)."""
    included = True
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if re.fullmatch(f"{regex}(/.*)?", path):
            included = negate
    return included


def test_final_image_stage_has_no_build_tools():
    """The runtime stage starts from the same slim base, copies the built venv, and installs nothing."""
    builder, runtime = dockerfile_stages()[0], runtime_stage()
    assert len(dockerfile_stages()) == 2
    assert instruction(builder, "FROM")[0].split()[0] == instruction(runtime, "FROM")[0].split()[0]
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text())
    assert base and "slim" in base.group(1)
    build_steps = r"apt-get|pip (install|wheel)|gcc|build-essential"
    assert not any(re.search(build_steps, a) for a in instruction(runtime, "RUN"))
    assert any(a.startswith("--from=builder") for a in instruction(runtime, "COPY"))
    assert not in_build_context("venv/bin/python") and not in_build_context(".git/config")


def builder_arg(name: str) -> str:
    [args] = [a for a in instruction(dockerfile_stages()[0], "ARG") if a.startswith(f"{name}=")]
    return args.split("=", 1)[1]


@pytest.mark.parametrize("requirements", ["default", "requirements-otel.txt"])
def test_builder_installs_exactly_the_tested_pins(requirements, tmp_path):
    """The builder's flattened requirements have no -e/-r lines and every pin is the one tested here."""
    [run] = [a for a in instruction(dockerfile_stages()[0], "RUN") if "grep" in a]
    [flatten] = [step.strip() for step in run.split("&&") if "grep" in step]
    output = re.search(r">\s*(\S+)$", flatten)
    assert output, flatten
    for stage in dockerfile_stages()[:1]:
        for args in instruction(stage, "COPY"):
            for source in shlex.split(args)[:-1]:
                if source.startswith("requirements"):
                    shutil.copy2(REPO / source, tmp_path / source)
    chosen = builder_arg("REQUIREMENTS") if requirements == "default" else requirements
    script = flatten.replace(output.group(1), "flat.txt")
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, check=True, timeout=30,
                   env={**os.environ, "REQUIREMENTS": chosen})
    lines = [line for line in (tmp_path / "flat.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert lines and not any(line.startswith("-") for line in lines)
    assert all("==" in line for line in lines), "every requirement the image installs is pinned"
    # --no-index: succeeds only if this venv (the tested one) already has every pinned version.
    check = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-q", "-r", "flat.txt"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr


def test_image_installs_runtime_dependencies_only():
    """The image's requirements hold no test runner, process manager or library no service module imports."""
    lines = (REPO / builder_arg("REQUIREMENTS")).read_text().splitlines()
    names = {line.split("==")[0].strip().lower() for line in lines if line and not line.startswith(("#", "-"))}
    assert "gunicorn" in names and "flask" in names  # the check reads the right file
    assert not names & {"pytest", "honcho", "requests", "hypothesis", "schemathesis", "mypy", "ruff"}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(dep.lower().startswith("requests") for dep in project["dependencies"])
    sources = [*(REPO / "src").rglob("*.py"), *(REPO / "service_a").glob("*.py"), *(REPO / "service_b").glob("*.py")]
    importing = [p for p in sources if re.search(r"^\s*(import|from) requests\b", p.read_text(), re.M)]
    assert not importing, f"service code imports requests, so it must be a runtime dependency: {importing}"


def test_builder_builds_the_project_wheel_from_the_build_context(tmp_path):
    """`pip wheel .` on exactly what .dockerignore lets through yields every module the command imports."""
    context = tmp_path / "context"
    for args in instruction(dockerfile_stages()[0], "COPY"):
        for source in shlex.split(args)[:-1]:
            for path in [REPO / source, *(REPO / source).rglob("*")]:
                relative = path.relative_to(REPO).as_posix()
                if path.is_file() and in_build_context(relative):
                    (context / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, context / relative)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--wheel-dir", str(tmp_path), "."],
                           cwd=context, capture_output=True, text=True, timeout=120, check=False)
    if build.returncode != 0 and "No matching distribution found for setuptools" in build.stderr:
        pytest.skip("pip could not fetch setuptools for the isolated build (no package index reachable)")
    assert build.returncode == 0, build.stderr
    [wheel] = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    config = (REPO / "gunicorn.conf.py").read_text()
    needed = {"service_a/app.py", "service_b/app.py", "echokit/settings.py"}
    modules = set(re.findall(r"\b(echokit(?:\.[a-z_]+)+)", config))
    assert modules, "gunicorn.conf.py names no echokit module: this check would prove nothing"
    missing = {
        m for m in modules if not {m.replace(".", "/") + ".py", m.replace(".", "/") + "/__init__.py"} & names
    }
    assert needed <= names and not missing, (needed - names, missing)


# ================================================================ the image's command, run here


def group_memory_kib(pgid: int) -> tuple[int, int]:
    """(RSS sum, PSS sum) in KiB over the processes of group ``pgid`` (master and workers)."""
    rss = pss = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return rss, pss


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


@pytest.fixture
def image_services(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start the Dockerfile's command in a copy of the image's /app, on loopback and free ports."""
    started: list[ServiceProcess] = []
    venv_bin = str(Path(sys.executable).parent)
    app_dir = build_app_dir(tmp_path / "app")

    def start(service: str, args: list[str] | None, overrides: dict[str, str]) -> ServiceProcess:
        assert set(overrides) <= set(image_env()), "override only variables the Dockerfile sets"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVICE_", "FAULT_", "OTEL_", "PROMETHEUS_"))}
        env.update({k: v for k, v in image_env().items() if k not in INTERPRETER_VARS})
        env.update(overrides)
        env["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")  # the image's /opt/venv/bin
        command = image_command(args)
        assert service_from_argv(command) == service
        port = SETTINGS[service](env).server.port
        log_path = tmp_path / f"{service}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        process = ServiceProcess(service[-1], "gunicorn", port, proc, log_path)
        started.append(process)
        process.wait_healthy()
        return process

    yield start
    for process in reversed(started):
        process.cleanup()


def test_dockerfile_command_serves_the_chain_and_stops_on_sigterm(image_services, k8s, tmp_path):
    """The image's exact command line serves /health, probes and /call-echo, fits its memory, drains on SIGTERM."""
    a_port, b_port = free_port(), free_port()
    workers = container_env(k8s_deployment(k8s, "service_a"))["WEB_CONCURRENCY"]
    a = image_services("service_a", None, {
        "SERVICE_A_HOST": "127.0.0.1", "SERVICE_A_PORT": str(a_port), "SERVICE_B_PORT": str(b_port),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics-a"),
    })
    b_env = {k: v for k, v in compose_service("service_b")["environment"].items() if k == "SERVICE_A_URL"}
    assert b_env, "compose.yaml gives B its SERVICE_A_URL"
    b = image_services("service_b", compose_service("service_b")["command"], {
        "SERVICE_B_HOST": "127.0.0.1", "SERVICE_B_PORT": str(b_port), "SERVICE_A_PORT": str(a_port),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics-b"),
    })
    assert a.get("/health").json() == {"status": "ok"}
    response = b.get("/call-echo?msg=hello")
    assert response.status_code == 200
    assert response.json() == {"msg": "hello", "echo_response": {"echo": "hello"}}
    for service, process in (("service_a", a), ("service_b", b)):
        deployment = k8s_deployment(k8s, service)
        pod = container(deployment)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert process.get(pod[probe]["httpGet"]["path"]).status_code == 200
        assert process.get(deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]).ok
        # Memory of master + workers (the workers' count from the manifest) fits the pod's sizing.
        assert container_env(deployment)["WEB_CONCURRENCY"] == workers
        rss, pss = group_memory_kib(process.pid)
        resources = pod["resources"]
        assert 0 < pss / 1024 < mebibytes(resources["requests"]["memory"])
        assert rss / 1024 < mebibytes(resources["limits"]["memory"])
    # Docker's HEALTHCHECK command, run as the image runs it, passes while A serves.
    check_env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVICE_", "PROMETHEUS_"))}
    check_env.update({"SERVICE_A_PORT": str(a_port), "SERVICE_B_PORT": str(free_port())})
    check_env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    healthcheck = image_healthcheck()
    app_dir = tmp_path / "app"
    assert subprocess.run(healthcheck, cwd=app_dir, env=check_env, timeout=30, check=False).returncode == 0
    # SIGTERM (Docker's STOPSIGNAL, the kubelet's signal) to gunicorn, PID 1 in the container.
    stop_signal = instruction(runtime_stage(), "STOPSIGNAL")[-1]
    started = time.monotonic()
    a.proc.send_signal(getattr(signal, stop_signal))
    assert a.proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 30 and port_is_closed(a_port)
    assert subprocess.run(healthcheck, cwd=app_dir, env=check_env, timeout=30, check=False,
                          capture_output=True).returncode != 0
