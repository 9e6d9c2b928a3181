"""Each app carries one typed Echokit extension; a missing one is an error, never a silent skip."""

from __future__ import annotations

import pytest
from flask import Flask

from echokit.extension import Echokit, echokit_of
from echokit.lifecycle import LifecycleState


def test_an_app_built_by_create_app_carries_its_extension(app_a: Flask) -> None:
    """The app's settings, lifecycle and metrics are one typed object, found from the app."""
    ext = echokit_of(app_a)
    assert isinstance(ext, Echokit)
    assert ext.server.service == "service_a"
    assert ext.lifecycle.state is LifecycleState.READY


def test_a_plain_flask_app_is_refused_with_a_message() -> None:
    """A Flask app echokit did not build has no lifecycle to drain: looking it up raises."""
    with pytest.raises(LookupError, match="not an echokit Flask app"):
        echokit_of(Flask(__name__))


def test_a_middleware_wrapped_app_is_refused_with_a_message(app_a: Flask) -> None:
    """Wrapping the Flask app itself would hide its lifecycle from the server, so it is an error."""

    class Wrapper:
        def __init__(self, app: Flask) -> None:
            self.app = app

    with pytest.raises(LookupError, match=r"wrap its app\.wsgi_app"):
        echokit_of(Wrapper(app_a))
