"""Optional OpenTelemetry tracing, switched on by the standard ``OTEL_*`` variables.

Off unless ``OTEL_TRACES_EXPORTER`` names an exporter (``console`` or ``otlp``) and
``OTEL_SDK_DISABLED`` is not true; while off, nothing from OpenTelemetry is imported.
Install it with ``pip install -r requirements-otel.txt`` (or ``pip install .[otel]``).
"""

from __future__ import annotations

import os
from typing import Any


def tracing_enabled() -> bool:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return bool(exporter) and exporter != "none" and not disabled


def instrument_app(app: Any, service_name: str) -> None:
    """Instrument a Flask app (and, for B, its HTTP client) when tracing is on; else do nothing."""
    if not tracing_enabled():
        return
    try:
        from echokit import otel  # the import is the switch
    except ImportError as exc:  # tracing asked for but not installed: say how to fix it, in one line
        from echokit.settings import SettingsError

        raise SettingsError(
            f"OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed ({exc.name}): "
            "pip install -r requirements-otel.txt"
        ) from None

    otel.instrument(app, service_name)
