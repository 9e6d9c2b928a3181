"""LeanFlask gives every request the URL binding and hooks plain Flask gives it."""

from __future__ import annotations

import pytest
from flask import Flask, Response, after_this_request, request
from werkzeug.test import EnvironBuilder, TestResponse
from werkzeug.wsgi import get_host

from echokit.web import LeanFlask

ENVIRONS = [
    {},
    {"HTTP_HOST": "Example.COM:8080"},
    {"HTTP_HOST": "bücher.example".encode().decode("latin-1")},
    {"HTTP_HOST": "[::1]:8081"},
    {"HTTP_HOST": "127.0.0.1:80"},
    {"wsgi.url_scheme": "https", "HTTP_HOST": "svc:443"},
    {"SCRIPT_NAME": "/prefix", "HTTP_HOST": "h"},
    {"HTTP_CONNECTION": "Upgrade", "HTTP_UPGRADE": "websocket", "HTTP_HOST": "h"},
]
FIELDS = ("server_name", "script_name", "subdomain", "url_scheme", "path_info", "default_method", "query_args")
PATHS = [("/echo", "msg=hello", "GET"), ("/caf\xc3\xa9", "", "HEAD"), ("/x", "a=%FF", "POST")]


def _environ(extra: dict[str, str], path: str, query: str, method: str) -> dict[str, object]:
    environ = EnvironBuilder(method=method).get_environ()
    environ.update({"PATH_INFO": path, "QUERY_STRING": query, **extra})
    return environ


@pytest.mark.parametrize("extra", ENVIRONS)
def test_a_cached_binding_is_the_one_werkzeug_builds(extra):
    """Second and later requests of a binding get the same adapter fields and request.host as Flask's path."""
    app = LeanFlask(__name__)
    for _ in range(2):  # the first request fills the cache, the second reads it
        for path, query, method in PATHS:
            environ = _environ(extra, path, query, method)
            req = app.request_class(environ)
            adapter = app.create_url_adapter(req)
            expected = app.url_map.bind_to_environ(environ, subdomain="")
            assert [getattr(adapter, f) for f in FIELDS] == [getattr(expected, f) for f in FIELDS]
            assert req.host == get_host(environ)


def test_routes_errors_and_hooks_behave_as_in_flask():
    """200, HEAD, 404, 405, a bad Host and after_this_request match plain Flask."""
    lean, plain = LeanFlask(__name__), Flask(__name__)
    for app in (lean, plain):

        @app.get("/echo")
        def echo() -> Response:
            @after_this_request
            def mark(response: Response) -> Response:
                response.headers["X-After-This"] = "1"
                return response

            return Response(request.args.get("msg", ""))

    def answers(app: Flask) -> list[tuple[int, bytes, str | None]]:
        client = app.test_client()
        out = []
        for _ in range(2):
            for response in (
                client.get("/echo?msg=hi"), client.head("/echo?msg=hi"), client.get("/nowhere"),
                client.post("/echo"), client.get("/echo", headers={"Host": "bad host\u00ff"}),
            ):
                out.append((response.status_code, response.data, response.headers.get("X-After-This")))
        return out

    assert answers(lean) == answers(plain)


def test_registered_hooks_run():
    """With before/after_request hooks (as OpenTelemetry adds), Flask's own walk over them runs."""
    app = LeanFlask(__name__)
    calls: list[str] = []
    app.get("/echo")(lambda: "hi")
    app.before_request(lambda: calls.append("before"))

    @app.after_request
    def after(response: Response) -> Response:
        calls.append("after")
        return response

    assert app.test_client().get("/echo").data == b"hi"
    assert calls == ["before", "after"]


def _routing_apps() -> tuple[LeanFlask, Flask]:
    lean, plain = LeanFlask(__name__), Flask(__name__)
    for app in (lean, plain):
        app.add_url_rule("/echo", "echo", lambda: "echo")
        app.add_url_rule("/items/<int:item>", "item", lambda item: f"item {item}")
        app.add_url_rule("/dir/", "dir", lambda: "dir")
        app.add_url_rule("/page", "page", lambda number: f"page {number}", defaults={"number": 1})
    return lean, plain


def _request(app: Flask, method: str, target: str) -> TestResponse:
    """``method target`` as a server hands it over: the raw path in PATH_INFO (``//echo`` included)."""
    path, _, query = target.partition("?")
    return app.test_client().open(
        "/", method=method, environ_overrides={"PATH_INFO": path, "QUERY_STRING": query}
    )


def test_remembered_routes_answer_as_flask_does():
    """Repeated requests to fixed paths, paths with converters, defaults, slash redirects and
    leading-slash variants get the answers plain Flask gives, the first time and every later time."""
    lean, plain = _routing_apps()
    paths = ["/echo", "//echo", "///echo?x=1", "/echo/", "/items/7", "/items/8", "/items/x", "/dir", "/dir/",
             "/page", "/nowhere"]

    def answers(app: Flask) -> list[tuple[int, bytes, str | None]]:
        return [
            (r.status_code, r.data, r.headers.get("Location"))
            for _ in range(3) for path in paths for method in ("GET", "HEAD", "POST")
            for r in [_request(app, method, path)]
        ]

    assert answers(lean) == answers(plain)


def test_hostile_paths_cannot_grow_the_route_memory():
    """Thousands of distinct paths (404s, converter values, extra leading slashes) leave only the
    fixed routes they reached remembered."""
    lean, _ = _routing_apps()
    for n in range(2000):
        assert _request(lean, "GET", f"/missing/{n}").status_code == 404
        assert _request(lean, "GET", f"/items/{n}").status_code == 200
        assert _request(lean, "GET", "/" * (n % 50 + 1) + "echo").status_code == 200
    assert {key[1:3] for key in lean._routes} == {("/echo", "GET")}


SIGNALS = ("appcontext_pushed", "request_started", "request_finished", "request_tearing_down",
           "appcontext_tearing_down", "appcontext_popped")


def test_connected_receivers_get_every_signal_flask_sends():
    """A receiver connected to any of Flask's six request signals, before or between requests, hears
    what it hears under plain Flask, in the same order; with none connected the requests still answer."""
    from flask import signals

    def heard(app: Flask) -> list[list[str]]:
        @app.get("/echo")
        def echo() -> Response:
            return Response("x")

        client = app.test_client()
        rounds: list[list[str]] = [[]]  # nothing connected: only the answer counts
        assert client.get("/echo").status_code == 200
        got: list[str] = []
        receivers = {name: (lambda sender, name=name, **extra: got.append(name)) for name in SIGNALS}
        for name, receiver in receivers.items():  # connected after the app has served
            getattr(signals, name).connect(receiver, app)
        try:
            for path in ("/echo", "/nowhere"):
                got.clear()
                client.get(path)
                rounds.append(list(got))
        finally:
            for name, receiver in receivers.items():
                getattr(signals, name).disconnect(receiver, app)
        return rounds

    lean, plain = heard(LeanFlask(__name__)), heard(Flask(__name__))
    assert lean == plain
    assert lean[1] == list(SIGNALS)


def test_teardown_functions_see_the_request_error_as_in_flask():
    """teardown_request and teardown_appcontext functions run after every request, with the
    exception of a view that failed and None otherwise, as under plain Flask."""

    def seen(app: Flask) -> list[tuple[str, str | None]]:
        calls: list[tuple[str, str | None]] = []

        @app.get("/ok")
        def ok() -> Response:
            return Response("x")

        @app.get("/boom")
        def boom() -> Response:
            raise RuntimeError("boom")

        @app.teardown_request
        def request_done(exc: BaseException | None) -> None:
            calls.append(("request", repr(exc) if exc else None))

        @app.teardown_appcontext
        def context_done(exc: BaseException | None) -> None:
            calls.append(("appcontext", repr(exc) if exc else None))

        client = app.test_client()
        assert client.get("/ok").status_code == 200
        assert client.get("/boom").status_code == 500
        return calls

    lean, plain = seen(LeanFlask(__name__)), seen(Flask(__name__))
    assert lean == plain
    assert lean == [("request", None), ("appcontext", None),
                    ("request", "RuntimeError('boom')"), ("appcontext", "RuntimeError('boom')")]


def test_closing_a_request_closes_the_files_it_parsed_and_costs_nothing_without_them() -> None:
    """The services' request class closes uploaded files once they were read, as Werkzeug's does."""
    from io import BytesIO

    from echokit.web import RoutedRequest

    upload = EnvironBuilder(method="POST", path="/", data={"f": (BytesIO(b"data"), "f.txt")}).get_environ()
    with_files = RoutedRequest(upload)
    stored = with_files.files["f"]
    with_files.close()
    assert stored.stream.closed
    untouched = RoutedRequest(EnvironBuilder(path="/echo").get_environ())
    untouched.close()
    assert "files" not in untouched.__dict__
