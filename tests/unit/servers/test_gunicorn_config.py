"""gunicorn.conf.py's settings and hooks, computed from a command line and an environment mapping."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from gunicorn import util
from gunicorn.http import wsgi as gunicorn_wsgi

from echokit.servers import SERVER_NAME, gunicorn_patches
from echokit.servers.gunicorn_config import gunicorn_config, service_from_argv
from echokit.settings import MAX_REQUEST_LINE_BYTES

ARGV_A = ["gunicorn", "-c", "gunicorn.conf.py", "service_a.app:create_app()"]


def config_for(tmp_path: Path, argv: list[str] = ARGV_A, **env: str) -> dict[str, object]:
    return gunicorn_config(argv, {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), **env})


def test_the_service_named_on_the_command_line_picks_its_address(tmp_path: Path) -> None:
    """A's app on the command line binds A's address; B's binds B's, from the same variables the services read."""
    assert config_for(tmp_path)["bind"] == ["127.0.0.1:8080"]
    argv_b = ["gunicorn", "service_b.app:create_app()"]
    assert config_for(tmp_path, argv_b, SERVICE_B_PORT="9191")["bind"] == ["127.0.0.1:9191"]
    assert config_for(tmp_path, WEB_CONCURRENCY="3")["workers"] == 3


def test_the_request_line_limit_is_the_one_b_checks_against(tmp_path: Path) -> None:
    """limit_request_line is echokit.settings.MAX_REQUEST_LINE_BYTES, named once."""
    assert config_for(tmp_path)["limit_request_line"] == MAX_REQUEST_LINE_BYTES == 8190


def test_graceful_timeout_outlasts_the_drain(tmp_path: Path) -> None:
    """gunicorn waits longer than the drain delay plus the drain timeout before it kills a worker."""
    config = config_for(tmp_path, DRAIN_DELAY_SECONDS="2", DRAIN_TIMEOUT_SECONDS="5")
    assert config["graceful_timeout"] == 8


def test_the_worker_and_logger_classes_it_names_exist(tmp_path: Path) -> None:
    """The dotted names gunicorn will import resolve to real classes."""
    config = config_for(tmp_path)
    for dotted in (config["worker_class"], config["logger_class"]):
        module, _, name = str(dotted).rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type)


def test_an_unset_metrics_directory_is_made_and_handed_to_the_workers(tmp_path: Path) -> None:
    """Without PROMETHEUS_MULTIPROC_DIR a fresh directory is made and written into the environment handed over."""
    environ: dict[str, str] = {}
    gunicorn_config(ARGV_A, environ)
    assert Path(environ["PROMETHEUS_MULTIPROC_DIR"]).is_dir()
    Path(environ["PROMETHEUS_MULTIPROC_DIR"]).rmdir()


def test_a_bad_value_stops_gunicorn_with_a_one_line_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A setting the service cannot run with exits with status 2 and one line naming the variable."""
    with pytest.raises(SystemExit) as stopped:
        config_for(tmp_path, SERVICE_A_PORT="http")
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: SERVICE_A_PORT must be ")


def test_exactly_one_app_must_be_named() -> None:
    """Neither or both services on the command line is refused."""
    assert service_from_argv(ARGV_A) == "service_a"
    for argv in (["gunicorn"], ["service_a.app:create_app()", "service_b.app:create_app()"]):
        with pytest.raises(ValueError, match="name exactly one app"):
            service_from_argv(argv)


def test_the_post_fork_hook_applies_the_patches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing changes nothing in gunicorn; the post_fork hook switches its errors to JSON."""
    monkeypatch.setattr(util, "write_error", util.write_error)  # restored after the test
    monkeypatch.setattr(gunicorn_wsgi, "SERVER", "gunicorn")
    hook = config_for(tmp_path)["post_fork"]
    assert util.write_error is not gunicorn_patches.write_json_error
    hook(None, None)  # type: ignore[operator]
    assert util.write_error is gunicorn_patches.write_json_error
    assert gunicorn_wsgi.SERVER == SERVER_NAME
