"""Skips for tests that need what only requirements-dev.txt or requirements-otel.txt installs.

``pip install -r requirements.txt`` (the design document's step) must still give a green
``pytest tests/``: a test that needs a fuzzer, a schema validator or OpenTelemetry says so and skips.
"""

from __future__ import annotations

import importlib.util

import pytest

__all__ = ["DEV_REQUIREMENTS", "installed", "needs_otel"]

DEV_REQUIREMENTS = "needs pip install -r requirements-dev.txt (./scripts/test installs it)"


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # find_spec imports the parent package, which may be missing
        return False


needs_otel = pytest.mark.skipif(not installed("opentelemetry.sdk"), reason="needs pip install -r requirements-otel.txt")
