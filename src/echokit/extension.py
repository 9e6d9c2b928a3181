"""The one object an app carries for echokit (Flask's ``init_app`` style): settings, lifecycle, metrics.

Every other module reaches it through :func:`echokit_of`, never through a string key, and a
missing one is an error that names the problem: a server that cannot find the lifecycle of
the app it serves must not silently skip draining.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

from echokit.lifecycle import Lifecycle
from echokit.metrics import Metrics
from echokit.settings import ServerSettings

if TYPE_CHECKING:
    from echokit.admission_app import AdmissionGate
    from echokit.upstream import EchoClient

__all__ = ["Echokit", "current_echokit", "echokit_of"]

_KEY = "echokit"


@dataclass
class Echokit:
    """What the shared parts of one app need: its server settings, lifecycle and metrics.

    ``readiness_details`` adds fields to ``/ready`` (B: the state of its calls to A);
    ``client`` is B's client for A, closed with the app; ``admission`` B's admission gate.
    """

    server: ServerSettings
    lifecycle: Lifecycle
    metrics: Metrics
    readiness_details: Callable[[], dict[str, object]] | None = None
    client: EchoClient | None = None
    admission: AdmissionGate | None = None

    def init_app(self, app: Flask) -> None:
        app.extensions[_KEY] = self

    def close(self) -> None:
        """Release what the app holds open (B's connection pool to A)."""
        if self.client is not None:
            self.client.close()


def echokit_of(app: object) -> Echokit:
    """The app's :class:`Echokit`; ``LookupError`` if ``app`` is not a Flask app built by echokit.

    A server handed a middleware-wrapped app gets the error at start-up: wrap ``app.wsgi_app``
    instead, so the Flask app (and its lifecycle) stays the object the server is given.
    """
    extensions = getattr(app, "extensions", None)
    found = extensions.get(_KEY) if isinstance(extensions, dict) else None
    if not isinstance(found, Echokit):
        raise LookupError(
            f"{type(app).__name__} object is not an echokit Flask app (no Echokit extension): serve the app "
            "create_app() returns; wrap its app.wsgi_app, not the app, in middleware"
        )
    return found


def current_echokit() -> Echokit:
    """The :class:`Echokit` of the app handling the current request."""
    return echokit_of(current_app)
