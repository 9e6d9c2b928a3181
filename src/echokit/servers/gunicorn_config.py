"""What ``gunicorn.conf.py`` needs, computed from the command line and the environment."""

from __future__ import annotations

import glob
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gunicorn import glogging

from echokit.settings import (
    ServerSettings,
    SettingsError,
    WorkerSettings,
    service_a_settings,
    service_b_settings,
    worker_settings,
)


def service_from_argv(argv: Sequence[str]) -> str:
    """``service_a`` or ``service_b``, from the app named on gunicorn's command line."""
    found = {name for name in ("service_a", "service_b") for arg in argv if arg.startswith(f"{name}.")}
    if len(found) != 1:
        raise SettingsError("name exactly one app: 'service_a.app:create_app()' or 'service_b.app:create_app()'")
    return found.pop()


@dataclass(frozen=True)
class GunicornSettings:
    service: str
    server: ServerSettings
    process_model: WorkerSettings

    @property
    def workers(self) -> int:
        return self.process_model.workers

    @property
    def worker_connections(self) -> int:
        return self.process_model.worker_connections

    @property
    def bind(self) -> list[str]:
        return [self.server.bind]

    @property
    def log_level(self) -> str:
        return self.server.log_level

    @property
    def graceful_timeout(self) -> int:
        return int(self.server.drain_delay_s + self.server.drain_timeout_s) + 1

    @property
    def logconfig_dict(self) -> dict[str, Any]:
        """gunicorn's own lines in the services' format, escaped like theirs."""
        handler = {"class": "logging.StreamHandler", "formatter": "safe", "stream": "ext://sys.stderr"}
        json_logs = self.server.log_format == "json"
        formatter = "echokit.logs.JsonFormatter" if json_logs else "echokit.logs.SafeTextFormatter"
        return {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"safe": {"()": formatter}},
            "handlers": {"stderr": handler},
            "loggers": {
                "gunicorn.error": {"handlers": ["stderr"], "level": self.server.log_level, "propagate": False},
                "gunicorn.access": {"handlers": [], "propagate": False},
            },
            "root": {"handlers": ["stderr"], "level": "WARNING"},
        }

    def on_starting(self, arbiter: Any) -> None:
        """Once per run, before any worker: start the metrics directory empty."""
        directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)

    def when_ready(self, arbiter: Any) -> None:
        # With reuse_port each worker binds the port itself, so gunicorn's own "Listening at"
        # line has no address in it: say where the service is.
        arbiter.log.info(
            "%s listening on http://%s (gunicorn, %d gevent workers)", self.service, self.server.bind, self.workers
        )

    def child_exit(self, arbiter: Any, worker: Any) -> None:
        from echokit.metrics import mark_worker_dead

        mark_worker_dead(worker.pid, self.server.metrics_dir)


class AppAccessLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger without its access line: the services log their own, once per request.

    With ``logconfig_dict`` set gunicorn would still build every access line's fields and then
    drop it (about 16 us per request in the benchmark).
    """

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None


def ensure_metrics_dir(environ: Any) -> str:
    """Point prometheus_client's multiprocess mode at a directory, making one if none is set.

    Must run before prometheus_client is first imported: it picks its storage at import time.
    """
    directory = environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        directory = tempfile.mkdtemp(prefix="echo-metrics-")
        environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return str(directory)


def gunicorn_settings(argv: Sequence[str], environ: Mapping[str, str]) -> GunicornSettings:
    """Settings for gunicorn.conf.py; a bad value stops gunicorn with a one-line message."""
    try:
        service = service_from_argv(argv)
        loader = service_a_settings if service == "service_a" else service_b_settings
        server = loader(environ).server
        ensure_metrics_dir(os.environ)
        return GunicornSettings(
            service=service,
            server=server,
            process_model=worker_settings(environ),
        )
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
