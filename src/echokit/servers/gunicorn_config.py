"""gunicorn's configuration for both services: what ``gunicorn.conf.py`` hands over to.

``gunicorn_config(sys.argv, os.environ)`` returns every gunicorn setting and hook, computed from
the command line (which service) and the same settings loader the services use.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from gunicorn import glogging

from echokit.servers import gunicorn_patches
from echokit.settings import (
    MAX_REQUEST_LINE_BYTES,
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
        directory = self.server.metrics_dir
        assert directory is not None  # gunicorn_settings always sets one
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)

    def when_ready(self, arbiter: Any) -> None:
        # With reuse_port each worker binds the port itself, so gunicorn's own "Listening at"
        # line has no address in it: say where the service is.
        arbiter.log.info(
            "%s listening on http://%s (gunicorn, %d gevent workers)", self.service, self.server.bind, self.workers
        )

    def post_fork(self, arbiter: Any, worker: Any) -> None:
        """In each worker, before it serves: gunicorn's own errors in JSON, the project's Server header."""
        gunicorn_patches.apply()

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


def ensure_metrics_dir(environ: MutableMapping[str, str]) -> str:
    """Point prometheus_client's multiprocess mode at a directory, making one if none is set.

    ``environ`` is the process environment gunicorn.conf.py hands over: the workers inherit the
    directory through it, and prometheus_client (which picks its storage when first imported)
    reads it there. Runs before the settings are loaded, so they see the same directory.
    """
    directory = environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        directory = tempfile.mkdtemp(prefix="echo-metrics-")
        environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return str(directory)


def gunicorn_settings(argv: Sequence[str], environ: MutableMapping[str, str]) -> GunicornSettings:
    """Settings for gunicorn.conf.py; a bad value stops gunicorn with a one-line message."""
    try:
        service = service_from_argv(argv)
        loader = service_a_settings if service == "service_a" else service_b_settings
        ensure_metrics_dir(environ)
        return GunicornSettings(
            service=service,
            server=loader(environ).server,
            process_model=worker_settings(environ),
        )
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# gunicorn's own header limits: a field as long as its longest request line, and at most 100 fields.
MAX_HEADER_FIELD_BYTES = 8190
MAX_HEADER_FIELDS = 100


def gunicorn_config(argv: Sequence[str], environ: MutableMapping[str, str]) -> dict[str, Any]:
    """Every setting and hook of gunicorn.conf.py, by gunicorn's names."""
    config = gunicorn_settings(argv, environ)
    return {
        "bind": config.bind,
        "workers": config.workers,
        "worker_class": "echokit.servers.gunicorn_worker.GracefulGeventWorker",
        "worker_connections": config.worker_connections,
        # A replacement instance can bind the same port before the old one is sent SIGTERM, so a
        # restart outside gunicorn's own reload (SIGHUP) never refuses a connection. The cost: a second
        # instance started by mistake on the same port shares the traffic instead of failing.
        "reuse_port": True,
        # Idle keep-alive connections close after this long; it is also how long a client may take
        # to send a request's headers, so a slowloris client ties up one greenlet for 5 s at most.
        "keepalive": 5,
        "timeout": 30,
        "graceful_timeout": config.graceful_timeout,
        # The request-line limit at gunicorn's maximum; B checks what it sends to A against the same constant.
        "limit_request_line": MAX_REQUEST_LINE_BYTES,
        "limit_request_fields": MAX_HEADER_FIELDS,
        "limit_request_field_size": MAX_HEADER_FIELD_BYTES,
        # The services log one access line per request themselves, in the document's format.
        "accesslog": None,
        "logger_class": "echokit.servers.gunicorn_config.AppAccessLogger",
        "errorlog": "-",
        "loglevel": config.log_level.lower(),
        "logconfig_dict": config.logconfig_dict,
        "proc_name": config.service,
        "on_starting": config.on_starting,
        "when_ready": config.when_ready,
        "post_fork": config.post_fork,
        "child_exit": config.child_exit,
        # No runtime control socket: two services on one host would fight over its default path, and
        # the container's root filesystem is read-only.
        "control_socket_disable": True,
    }
