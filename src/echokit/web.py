"""What both Flask apps share: the Echokit extension, probes, JSON errors and the observed WSGI layer."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response, current_app, request
from flask.ctx import AppContext
from flask.globals import _cv_app, request_ctx
from flask.sessions import NullSession, SessionInterface, SessionMixin
from flask.signals import (
    appcontext_popped,
    appcontext_pushed,
    appcontext_tearing_down,
    request_finished,
    request_started,
    request_tearing_down,
)
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import MapAdapter, Rule
from werkzeug.wrappers import Response as BaseResponse

from echokit.extension import Echokit, echokit_of
from echokit.lifecycle import Lifecycle
from echokit.logs import configure_logging
from echokit.metrics import Metrics
from echokit.middleware import ROUTE_ENVIRON, ObservedApp
from echokit.probes import probes
from echokit.responses import BadMessageError, error_response, parse_msg
from echokit.settings import ServerSettings

OPENAPI_FILE = "openapi.json"

# Client-facing wording for the errors Flask/Werkzeug raise; the status code stays theirs.
_ERROR_TEXT = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    414: "Request URI too long",
    431: "Request header fields too large",
}


def create_base_app(import_name: str, server: ServerSettings) -> tuple[Flask, logging.Logger]:
    """A Flask app with ``/health``, ``/ready``, ``/metrics`` and JSON errors for everything, and the
    service's logger (named ``service_a`` or ``service_b``, in the settings' level and format).

    The service module adds its own routes, then calls :func:`finish_app`.
    """
    logger = configure_logging(server.service, server.log_level, server.log_format)
    app = LeanFlask(import_name)
    # No implicit OPTIONS route: every method but GET/HEAD gets the JSON 405 with its Allow header.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # no route reads a body; refuse big ones early
    app.session_interface = NoSessions()
    app.request_class = RoutedRequest
    Echokit(server, Lifecycle(server.drain_delay_s, server.drain_timeout_s), Metrics(server.metrics_dir)).init_app(app)
    app.register_blueprint(probes)

    openapi = load_openapi(app.root_path)
    if openapi is not None:

        @app.get("/openapi.json")
        def openapi_route() -> Response:
            """The service's checked-in OpenAPI document, byte for byte."""
            return Response(openapi, mimetype="application/json")

    @app.errorhandler(BadMessageError)
    def bad_message(exc: BadMessageError) -> Response:
        """A ``msg`` that cannot be accepted, in either service: its status and message."""
        return error_response(exc.status, exc.error)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        if isinstance(exc, MethodNotAllowed):  # counted under the route whose path matched
            route = matched_route()
            if route is not None:
                request.environ[ROUTE_ENVIRON] = route
        response = error_response(code, _ERROR_TEXT.get(code, exc.name))
        for name, value in exc.get_headers():
            if name.lower() == "allow":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        logger.exception("unhandled %s on %s %s", type(exc).__name__, request.method, request.path)
        return error_response(500, "Internal server error")

    return app, logger


# Bound on the cache of URL bindings: the Host header is client-chosen; the hosts a service is
# really reached by are few.
_BINDINGS_LIMIT = 64
# Bound on the cache of matched routes. Only successful matches of rules without converters are
# kept, so the keys are the few (host, path, method) triples that reach a fixed route.
_ROUTES_LIMIT = 1024


class LeanFlask(Flask):
    """Flask, without the per-request work whose answer is the same for every request.

    * The URL adapter: Flask binds the URL map to each request's environ (``bind_to_environ``:
      the host read twice, lower-cased, split, IDNA-encoded). What that yields depends only on the
      host, scheme and script name, so it is kept per those and the adapter built from it directly.
      Anything unusual (``TRUSTED_HOSTS``, ``SERVER_NAME``, host or subdomain matching) takes
      Flask's own path, as does every first request of a binding (so a bad host is still a 400).
    * Routing: which rule a path matches is the same for every request with that host part, path
      and method, as long as the rule has no converters (``/echo``, ``/health``: every route of the
      services). Such successful matches are remembered (:class:`_RouteCachingAdapter`); a path
      with arguments, a redirect, a 404 or a 405 always goes through Werkzeug's matcher. Flask
      refuses new routes once the app has served a request, so the map cannot change under the cache.
    * ``before_request``/``after_request`` hooks: while none are registered (the services have none;
      OpenTelemetry's instrumentation adds some), the per-request walk over the blueprint chain
      for them is skipped. ``after_this_request`` and error handling are Flask's.
    * Signals and teardown functions: Flask sends six signals per request (request started,
      finished and tearing down; app context pushed, tearing down and popped) and walks the
      teardown functions. A signal with no receiver, or a walk over none, is skipped (about 4 µs a
      request together, measured); whether anything is connected is looked at on every request, so a
      receiver connected at any time gets every signal from then on, as in Flask.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (Host, SERVER_NAME, SERVER_PORT, scheme, SCRIPT_NAME, Connection, Upgrade): everything
        # bind_to_environ reads but the path, query and method -> request.host and the binding.
        self._bindings: dict[tuple[Any, ...], tuple[str, str, str, str | None, str]] = {}
        # (domain part, path part, method, websocket) -> the argument-free rule it matched.
        self._routes: dict[tuple[str, str, str, bool], Rule] = {}

    def create_url_adapter(self, request: Request | None) -> MapAdapter | None:
        config = self.config
        if (
            request is None or config["TRUSTED_HOSTS"] is not None or config["SERVER_NAME"] is not None
            or self.url_map.host_matching or self.subdomain_matching
        ):
            return super().create_url_adapter(request)
        environ = request.environ
        key = (
            environ.get("HTTP_HOST"), environ.get("SERVER_NAME"), environ.get("SERVER_PORT"),
            environ["wsgi.url_scheme"], environ.get("SCRIPT_NAME"), environ.get("HTTP_CONNECTION"),
            environ.get("HTTP_UPGRADE"),
        )
        binding = self._bindings.get(key)
        if binding is None:
            adapter = super().create_url_adapter(request)
            if adapter is not None and len(self._bindings) < _BINDINGS_LIMIT:
                self._bindings[key] = (
                    request.host, adapter.server_name, adapter.script_name, adapter.subdomain, adapter.url_scheme
                )
            return adapter
        host, server_name, script_name, subdomain, url_scheme = binding
        request.host = host  # what Flask's create_url_adapter sets
        path_info = environ.get("PATH_INFO")
        query = environ.get("QUERY_STRING")
        adapter = _RouteCachingAdapter(  # as Map.bind_to_environ builds it, WSGI strings decoded the same way
            self.url_map, server_name, script_name, subdomain, url_scheme,
            "/" if path_info is None else _wsgi_string(path_info), environ["REQUEST_METHOD"],
            None if query is None else _wsgi_string(query),
        )
        adapter.routes = self._routes
        return adapter

    def app_context(self) -> AppContext:
        return LeanAppContext(self)

    def full_dispatch_request(self) -> Response:
        if request_started.receivers:
            return super().full_dispatch_request()
        self._got_first_request = True
        try:  # Flask's, without the send to nobody
            rv = self.preprocess_request()
            if rv is None:
                rv = self.dispatch_request()
        except Exception as e:
            rv = self.handle_user_exception(e)
        return self.finalize_request(rv)

    def finalize_request(self, rv: Any, from_error_handler: bool = False) -> Response:
        if request_finished.receivers:
            return super().finalize_request(rv, from_error_handler)
        response = self.make_response(rv)
        try:  # Flask's, without the send to nobody
            response = self.process_response(response)
        except Exception:
            if not from_error_handler:
                raise
            self.logger.exception("Request finalizing failed with an error while handling an error")
        return response

    def do_teardown_request(self, *exc: Any) -> None:
        if request_tearing_down.receivers or any(self.teardown_request_funcs.values()):
            super().do_teardown_request(*exc)

    def do_teardown_appcontext(self, *exc: Any) -> None:
        if appcontext_tearing_down.receivers or self.teardown_appcontext_funcs:
            super().do_teardown_appcontext(*exc)

    def preprocess_request(self) -> Any:
        if any(self.before_request_funcs.values()) or any(self.url_value_preprocessors.values()):
            return super().preprocess_request()
        return None  # what Flask's loops over no hooks return

    def process_response(self, response: Response) -> Response:
        if any(self.after_request_funcs.values()) or not isinstance(self.session_interface, NoSessions):
            return super().process_response(response)
        for func in request_ctx._after_request_functions:  # after_this_request, as Flask runs them
            response = self.ensure_sync(func)(response)
        return response


class LeanAppContext(AppContext):
    """Flask's application context, without sending ``appcontext_pushed``/``appcontext_popped`` to nobody."""

    def push(self) -> None:
        if appcontext_pushed.receivers:
            super().push()
            return
        self._cv_tokens.append(_cv_app.set(self))

    def pop(self, *exc: Any) -> None:
        if appcontext_popped.receivers:
            super().pop(*exc)
            return
        try:  # Flask's, without the send
            if len(self._cv_tokens) == 1:
                self.app.do_teardown_appcontext(*(exc or (sys.exc_info()[1],)))
        finally:
            ctx = _cv_app.get()
            _cv_app.reset(self._cv_tokens.pop())
        if ctx is not self:
            raise AssertionError(f"Popped wrong app context. ({ctx!r} instead of {self!r})")



class _RouteCachingAdapter(MapAdapter):
    """Werkzeug's URL adapter, remembering the rule that a request's own path matched when that rule
    has no converters (see :class:`LeanFlask`); every other match is Werkzeug's."""

    routes: dict[tuple[str, str, str, bool], Rule]

    def match(
        self, path_info: str | None = None, method: str | None = None, return_rule: bool = False,
        query_args: Any = None, websocket: bool | None = None,
    ) -> tuple[Any, Any]:
        if path_info is not None or method is not None or not return_rule or websocket is not None:
            return super().match(path_info, method, return_rule, query_args, websocket)  # type: ignore[call-overload,no-any-return]
        # The inputs MapAdapter.match gives the matcher, computed the way it computes them.
        domain = self.subdomain if self.subdomain is not None else self.server_name
        path = f"/{self.path_info.lstrip('/')}" if self.path_info else ""
        key = (domain, path, self.default_method.upper(), self.websocket)
        rule = self.routes.get(key)
        if rule is not None:
            return rule, {}  # a fresh dict: Flask hands view_args to the view as keyword arguments
        rule, view_args = super().match(return_rule=True, query_args=query_args)
        if not view_args and not rule.arguments and len(self.routes) < _ROUTES_LIMIT:
            self.routes[key] = rule
        return rule, view_args


def _wsgi_string(value: str) -> str:
    """A WSGI environ string (latin-1 code points of the raw bytes) as UTF-8 text, as Werkzeug decodes it."""
    return value.encode("latin1").decode(errors="replace")


class RoutedRequest(Request):
    """Flask's request, which also leaves the matched route template in the WSGI environ.

    Flask sets ``url_rule`` once, when routing matches; the observing layer outside Flask reads the
    template from the environ after the app returned, so no ``before_request`` hook runs for it.
    """

    _url_rule: Rule | None = None

    def close(self) -> None:
        """Werkzeug's: close the uploaded files, if they were ever parsed (here: never; Flask calls this
        for every request, and the walk over no files cost about 2 % of A's samples under load)."""
        if "files" in self.__dict__:
            super().close()

    @property
    def url_rule(self) -> Rule | None:
        return self._url_rule

    @url_rule.setter
    def url_rule(self, rule: Rule | None) -> None:
        self._url_rule = rule
        if rule is not None:
            self.environ[ROUTE_ENVIRON] = rule.rule


class NoSessions(SessionInterface):
    """Neither service has sessions: no per-request session object, no cookie ever set.

    Flask's default would build a NullSession for every request (there is no secret key) and check
    it again for saving; this hands out one shared, empty, read-only one.
    """

    _null = NullSession()

    def open_session(self, app: Flask, request: Request) -> NullSession:
        return self._null

    def save_session(self, app: Flask, session: SessionMixin, response: BaseResponse) -> None:
        return None


def request_msg(environ: dict[str, Any], max_bytes: int) -> str | None:
    """The request's ``msg`` (from its WSGI ``environ``), decoded strictly; None when there is none.

    Raises :class:`BadMessageError` (answered by the app's handler) for a ``msg`` that is not
    valid percent-encoded UTF-8 or is longer than ``max_bytes`` (``MAX_MSG_BYTES``).
    """
    return parse_msg(environ.get("QUERY_STRING", "").encode("latin-1"), max_bytes)


def matched_route() -> str | None:
    """The current request's route template, also for a 405 (the path matched, the method did not)."""
    if request.url_rule is not None:
        return request.url_rule.rule
    error = request.routing_exception
    if not isinstance(error, MethodNotAllowed) or not error.valid_methods:
        return None
    method = next(iter(error.valid_methods))
    try:  # match again with a method the route accepts, to learn which route it was
        rule, _ = current_app.url_map.bind_to_environ(request.environ).match(method=method, return_rule=True)
    except HTTPException:
        return None
    return str(rule.rule)


def load_openapi(root_path: str) -> bytes | None:
    """The ``openapi.json`` next to the service module (``service_a/openapi.json``), if there is one.

    ``root_path`` is Flask's folder of the module that built the app, which is right both for
    ``python service_a/app.py`` (module ``__main__``) and for an installed package; read once at start-up.
    """
    try:
        return (Path(root_path) / OPENAPI_FILE).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def finish_app(app: Flask, server: ServerSettings, logger: logging.Logger) -> Flask:
    """Wrap the app in the observed WSGI layer and switch tracing on if configured."""
    ext = echokit_of(app)
    app.wsgi_app = ObservedApp(  # type: ignore[method-assign]
        app.wsgi_app, logger, ext.lifecycle, ext.metrics, server.log_probes
    )
    from echokit import tracing  # imports OpenTelemetry only when it is switched on

    tracing.instrument_app(app, server.service, server.tracing)
    return app
