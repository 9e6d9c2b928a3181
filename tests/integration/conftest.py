"""Fixtures for tests that run the real services as processes on free ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import Pair, ServiceProcess, start_service


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start services with ``services("a", mode=..., env=...)``; all are stopped at teardown."""
    started: list[ServiceProcess] = []

    def start(name: str, **kwargs: Any) -> ServiceProcess:
        service = start_service(name, tmp_path, **kwargs)
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        service.cleanup()


@pytest.fixture
def chain(services: Callable[..., ServiceProcess]) -> Callable[..., Pair]:
    """Start A then B wired to it: ``a, b = chain(mode="gunicorn", a_env={...}, b_env={...})``."""

    def start(
        mode: str = "gunicorn",
        a_env: dict[str, str] | None = None,
        b_env: dict[str, str] | None = None,
        workers: int | None = None,
    ) -> Pair:
        a = services("a", mode=mode, env=a_env, workers=workers)
        b = services("b", mode=mode, a_port=a.port, env=b_env, workers=workers)
        return a, b

    return start


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Pair]]:
    """``pair(mode)``: a default A and a B wired to it, started once per session and mode, shared by the
    modules that only read from the services (starting and stopping gunicorn costs seconds)."""
    started: dict[str, Pair] = {}

    def get_pair(mode: str) -> Pair:
        if mode not in started:
            log_dir = tmp_path_factory.mktemp(f"pair-{mode}")
            a = start_service("a", log_dir, mode=mode)
            try:
                started[mode] = (a, start_service("b", log_dir, mode=mode, a_port=a.port))
            except BaseException:
                a.cleanup()
                raise
        return started[mode]

    yield get_pair
    for a, b in started.values():
        b.cleanup()
        a.cleanup()
