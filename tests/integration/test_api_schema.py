"""The published OpenAPI documents: valid OpenAPI 3.1, served byte for byte, and true to the real routes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.support.requires import DEV_REQUIREMENTS

pytest.importorskip("jsonschema", reason=DEV_REQUIREMENTS)
pytest.importorskip("schemathesis", reason=DEV_REQUIREMENTS)
import jsonschema
from schemathesis.specs.openapi.definitions import OPENAPI_31  # the official 3.1 schema, bundled

from echokit.settings import ENV_VARS, service_a_settings, service_b_settings
from service_a.app import create_app as create_a
from service_b.app import create_app as create_b
from tests.support.harness import REPO

DOCS = {"a": REPO / "service_a" / "openapi.json", "b": REPO / "service_b" / "openapi.json"}
ERROR_REF = "#/components/schemas/Error"
# The framework-added method that is answered (as GET without a body) but not documented as an operation.
IMPLICIT_METHODS = {"HEAD"}


def load(name: str) -> dict[str, Any]:
    return json.loads(DOCS[name].read_text(encoding="utf-8"))


def build_app(name: str) -> Flask:
    if name == "a":
        return create_a(service_a_settings({}))
    return create_b(service_b_settings({}))


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` followed (one level is all these documents use)."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return dict(target)


@pytest.mark.parametrize("name", ["a", "b"])
def test_document_is_valid_openapi_3_1(name):
    """Each checked-in document validates against the official OpenAPI 3.1 schema."""
    doc = load(name)
    assert doc["openapi"] == "3.1.0"
    jsonschema.Draft202012Validator(OPENAPI_31).validate(doc)
    broken = copy.deepcopy(doc)
    broken["paths"]["/health"]["get"]["responses"] = []  # the validator is not vacuous
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(OPENAPI_31).validate(broken)


@pytest.mark.parametrize("mode", ["gunicorn", "dev"])
def test_served_document_is_the_checked_in_file(pair, mode):
    """GET /openapi.json answers the checked-in file byte for byte, as JSON, under both servers."""
    for service in pair(mode):
        response = service.get("/openapi.json")
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.content == DOCS[service.name].read_bytes()


@pytest.mark.parametrize("name", ["a", "b"])
def test_document_lists_exactly_the_real_routes(name):
    """Every route of the Flask app is documented with its methods, and every documented path exists."""
    app = build_app(name)
    real = {
        rule.rule: sorted((rule.methods or set()) - IMPLICIT_METHODS)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
    }
    documented = {path: sorted(method.upper() for method in item) for path, item in load(name)["paths"].items()}
    assert documented == real


@pytest.mark.parametrize("name", ["a", "b"])
def test_every_error_response_is_json_with_error(name):
    """Every documented 4xx/5xx (and the shared ones: 400/404/405/413/414/431/500) is the JSON Error body."""
    doc = load(name)
    error_schema = doc["components"]["schemas"]["Error"]
    assert error_schema["required"] == ["error"]
    shared = doc["components"]["responses"]
    assert set(shared) >= {"BadRequest", "NotFound", "MethodNotAllowed", "PayloadTooLarge", "UriTooLong",
                           "HeadersTooLarge", "InternalError"}
    checked = 0
    responses = [(f"components {key}", value) for key, value in shared.items()]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            statuses = set(operation["responses"])
            assert {"400", "431", "500"} <= statuses, f"{method} {path}"
            responses += [
                (f"{method} {path} {code}", value)
                for code, value in operation["responses"].items()
                if code[0] in "45" and (path, code) != ("/ready", "503")  # not ready: the Ready body
            ]
    for label, response in responses:
        content = resolve(doc, response)["content"]
        assert list(content) == ["application/json"], label
        assert content["application/json"]["schema"] == {"$ref": ERROR_REF}, label
        example = content["application/json"].get("example")
        if example is not None:
            jsonschema.validate(example, error_schema)
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize(("name", "path"), [("a", "/echo"), ("b", "/call-echo")])
def test_msg_parameter_documents_the_configured_limit(name, path):
    """``msg`` is documented with the MAX_MSG_BYTES default as its limit, and its 414 is documented."""
    operation = load(name)["paths"][path]["get"]
    (msg,) = [p for p in operation["parameters"] if p.get("name") == "msg"]
    assert msg["in"] == "query"
    assert msg["schema"]["maxLength"] == int(ENV_VARS["MAX_MSG_BYTES"].default)
    assert "MAX_MSG_BYTES" in msg["description"]
    assert msg["required"] is (name == "b")  # B answers 400 without msg; A echoes ""
    assert "414" in operation["responses"]


@pytest.mark.parametrize("name", ["a", "b"])
def test_documented_examples_are_what_the_service_answers(name):
    """The 200 examples of the probes and of the echo are exactly what the service answers for them."""
    client = build_app(name).test_client()
    paths = load(name)["paths"]

    def example(path: str) -> Any:
        return paths[path]["get"]["responses"]["200"]["content"]["application/json"]["example"]

    assert client.get("/health").get_json() == example("/health")
    ready = client.get("/ready").get_json()
    ready.pop("service_a", None)  # B adds its breaker state, documented as an open object
    assert ready == example("/ready")
    if name == "a":
        assert client.get("/echo?msg=hello").get_json() == example("/echo")
    else:  # B's answer needs a live A: fuzzing checks it; here the example must be the document's body
        assert example("/call-echo") == {"msg": "hello", "echo_response": {"echo": "hello"}}


def test_documents_are_stored_where_packaging_finds_them():
    """Each document sits in its service package, next to app.py, where the app and the wheel look for it."""
    for name, path in DOCS.items():
        assert path.parent == Path(build_app(name).root_path)
