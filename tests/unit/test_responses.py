"""Parsing ``msg`` from the raw query string, and the JSON bodies both services answer with."""

from __future__ import annotations

import json

import pytest
from flask import Response
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from echokit.responses import BadMessageError, JsonResponse, error_response, json_response, parse_msg, to_json

LIMIT = 4096


def parse(query: str, max_bytes: int = LIMIT) -> str | None:
    # WSGI hands the query string over as latin-1 text; the services re-encode it to bytes like this.
    return parse_msg(query.encode("latin-1"), max_bytes)


@pytest.mark.parametrize(
    ("query", "msg"),
    [
        ("msg=hello", "hello"),
        ("msg=", ""),
        ("msg", ""),
        ("msg=a+b", "a b"),
        ("msg=a%20b", "a b"),
        ("msg=%2B", "+"),
        ("msg=a%26b%3Dc", "a&b=c"),
        ("msg=%25", "%"),
        ("msg=caf%C3%A9", "café"),
        ("msg=%F0%9F%99%82", "🙂"),
        ("msg=%e2%9c%93", "✓"),
        ("msg=a=b", "a=b"),
        ("x=1&msg=hi&y=2", "hi"),
        ("msg=first&msg=second", "first"),
        ("&&msg=after-empty-pairs", "after-empty-pairs"),
        ("msg=a;b", "a;b"),
    ],
)
def test_msg_is_decoded_like_a_form_value(query: str, msg: str) -> None:
    """'+' is a space, %XX are UTF-8 bytes, the first msg wins and only '&' separates pairs."""
    assert parse(query) == msg


@pytest.mark.parametrize("query", ["", "other=1", "MSG=upper", "msgs=plural", "xmsg=1", "msg%3Dx=1"])
def test_absent_msg_is_none(query: str) -> None:
    """Without a parameter named exactly 'msg', there is no message (None)."""
    assert parse(query) is None


@pytest.mark.parametrize("value", ["%", "%4", "%G0", "abc%", "%%41", "100%25%"])
def test_a_percent_not_followed_by_two_hex_digits_is_a_400(value: str) -> None:
    """A '%' must start a %XX escape; anything else is rejected with 400 rather than guessed at."""
    with pytest.raises(BadMessageError) as caught:
        parse("msg=" + value)
    assert (caught.value.status, caught.value.error) == (400, "Invalid percent-encoding in 'msg' parameter")


@pytest.mark.parametrize("value", ["%FF", "%C3", "%C3%28", "%ED%A0%80", "%C0%80", "%F4%90%80%80", "caf\xe9"])
def test_bytes_that_are_not_utf8_are_a_400(value: str) -> None:
    """Truncated sequences, overlongs, surrogates, code points past U+10FFFF and raw latin-1 are rejected."""
    with pytest.raises(BadMessageError) as caught:
        parse("msg=" + value)
    assert (caught.value.status, caught.value.error) == (400, "Invalid UTF-8 in 'msg' parameter")


def test_only_the_chosen_msg_is_validated() -> None:
    """A later, broken duplicate msg is ignored: the first one is the message."""
    assert parse("msg=ok&msg=%ZZ") == "ok"


def test_the_limit_counts_decoded_bytes() -> None:
    """'%41' is one byte, not three: the limit applies to the decoded message."""
    assert parse("msg=" + "%41" * 5, max_bytes=5) == "AAAAA"
    with pytest.raises(BadMessageError):
        parse("msg=" + "%41" * 6, max_bytes=5)


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    """Two 2-byte characters are 4 bytes: allowed at a 4-byte limit, refused at 3 with 414."""
    assert parse("msg=%C3%A9%C3%A9", max_bytes=4) == "éé"
    with pytest.raises(BadMessageError) as caught:
        parse("msg=%C3%A9%C3%A9", max_bytes=3)
    assert caught.value.status == 414
    assert caught.value.error == "'msg' parameter too long: 4 bytes, the limit is 3"


def test_unencoded_text_is_limited_too() -> None:
    """A plain value with no escapes is held to the same byte limit."""
    with pytest.raises(BadMessageError) as caught:
        parse("msg=" + "x" * 11, max_bytes=10)
    assert caught.value.status == 414


# --- JSON bodies ------------------------------------------------------------------------------------


def test_json_is_compact_in_the_given_key_order() -> None:
    """Bodies are compact JSON with keys in the order given, exactly as the document shows them."""
    assert to_json({"msg": "hello", "echo_response": {"echo": "hello"}}) == (
        '{"msg":"hello","echo_response":{"echo":"hello"}}'
    )


def test_json_keeps_unicode_and_escapes_what_json_requires() -> None:
    """Non-ASCII stays as UTF-8 text; quotes, backslashes and controls are JSON-escaped."""
    assert to_json({"echo": 'é "q" \\ \n'}) == '{"echo":"é \\"q\\" \\\\ \\n"}'


def test_error_response_shape() -> None:
    """Errors are {"error": ...} plus "details" only when there are details, as application/json."""
    plain = error_response(400, "Missing 'msg' parameter")
    assert plain.status_code == 400
    assert plain.get_data(as_text=True) == '{"error":"Missing \'msg\' parameter"}'
    detailed = error_response(503, "Service A unavailable", "Connection error: x", {"Retry-After": "3"})
    assert detailed.get_json() == {"error": "Service A unavailable", "details": "Connection error: x"}
    assert detailed.headers["Retry-After"] == "3"
    assert detailed.mimetype == "application/json"


def test_json_response_is_utf8() -> None:
    """A body with non-ASCII text is sent as UTF-8 bytes."""
    assert json_response({"echo": "日本"}).data == '{"echo":"日本"}'.encode()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, None), (400, None), (404, None), (503, {"Retry-After": "1"}), (405, {"Allow": "GET, HEAD"}),
        (204, None), (304, None), (302, {"Location": "/elsewhere"}), (200, {"Content-Location": "/é"}),
    ],
)
def test_json_responses_go_to_the_server_as_werkzeug_sends_them(method, status, headers):
    """Same status line, headers and body as Werkzeug's own get_wsgi_response, for every case it fixes up."""
    environ = EnvironBuilder(method=method, path="/echo").get_environ()
    ours, theirs = JsonResponse(b'{"echo":"hi"}', status, headers), JsonResponse(b'{"echo":"hi"}', status, headers)
    body, line, sent = ours.get_wsgi_response(environ)
    expected_body, expected_line, expected_headers = Response.get_wsgi_response(theirs, environ)
    assert (list(body), line, sent) == (list(expected_body), expected_line, expected_headers)


@pytest.mark.parametrize("status", [200, 400, 404, 413, 500, 503, 504, 299])
@pytest.mark.parametrize("headers", [None, {"Retry-After": "1"}])
def test_a_json_response_is_built_as_werkzeug_builds_one(status, headers):
    """Same status, headers in the same order, body and flags as Werkzeug's Response given the same
    arguments, and it changes like one afterwards."""
    body = b'{"echo":"hi"}'
    ours = JsonResponse(body, status, headers)
    theirs = Response(body, status, headers, content_type="application/json", direct_passthrough=True)
    assert ours.headers.to_wsgi_list() == theirs.headers.to_wsgi_list()
    assert (ours.status, ours.status_code, ours.get_data(), ours.direct_passthrough) == (
        theirs.status, theirs.status_code, theirs.get_data(), theirs.direct_passthrough
    )
    for response in (ours, theirs):
        response.headers["X-Extra"] = "1"
        response.status_code = 201
        response.set_data(b"{}")
    assert ours.headers.to_wsgi_list() == theirs.headers.to_wsgi_list() and ours.status == theirs.status


_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
_BODIES = st.recursive(
    st.dictionaries(_TEXT, _TEXT | st.integers() | st.none() | st.booleans(), max_size=4),
    lambda inner: st.dictionaries(_TEXT, inner | _TEXT, max_size=4),
    max_leaves=12,
)


@given(_BODIES)
def test_json_bodies_are_exactly_what_the_json_module_writes(payload):
    """Any body, strings, nested objects or other values: json.dumps' compact, non-ASCII output."""
    assert to_json(payload) == json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
