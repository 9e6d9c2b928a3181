"""Tracing off means OpenTelemetry is never imported, checked in a fresh interpreter (a real process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.requires import needs_otel


@needs_otel
def test_tracing_off_imports_nothing_from_opentelemetry():
    """A built app imports no OpenTelemetry module unless OTEL_TRACES_EXPORTER switches tracing on."""
    script = textwrap.dedent(
        """
        import sys
        from service_a.app import create_app as make_a
        from service_b.app import create_app as make_b
        from echokit.settings import service_a_settings, service_b_settings

        def loaded():
            return sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")

        for value in (None, "none", "none,none", "console"):
            env = {} if value is None else {"OTEL_TRACES_EXPORTER": value}
            make_a(service_a_settings(env))
            make_b(service_b_settings(env))
            print(value, len(loaded()))
        """
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ""}
    result = subprocess.run(  # our own interpreter and script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    counts = dict(line.split() for line in result.stdout.splitlines())
    assert counts["None"] == "0"
    assert counts["none"] == "0"
    assert counts["none,none"] == "0"
    assert int(counts["console"]) > 0  # the same check does see OpenTelemetry once it is switched on
