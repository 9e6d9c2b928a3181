"""What gunicorn's master process imports: its config and worker class, never the apps' stack."""

from __future__ import annotations

import subprocess
import sys


def test_the_master_imports_neither_flask_nor_prometheus_client():
    """gunicorn.conf.py's modules and the worker class load without Flask or prometheus_client (the
    master's ~30 MiB in docs/performance.md); only the workers, which build the app, import them."""
    script = (
        "import sys, echokit.servers.gunicorn_config, echokit.servers.gunicorn_worker; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'werkzeug', 'prometheus_client'}))"
    )
    result = subprocess.run(  # our own interpreter and script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
