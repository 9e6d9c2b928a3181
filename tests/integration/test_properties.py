"""Property tests (hypothesis) against real processes: any text round-trips through B and A exactly.

The services stay up for all examples of a test (module-scoped), so hundreds of examples cost seconds.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.support.requires import DEV_REQUIREMENTS

pytest.importorskip("hypothesis", reason=DEV_REQUIREMENTS)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echokit.settings import MAX_REQUEST_LINE_BYTES
from tests.support.harness import ServiceProcess, start_service

MAX_MSG_BYTES = 4096  # the default of the MAX_MSG_BYTES setting
DEV_REQUEST_LINE = 65536  # http.server's request-line limit (the development server)
EXAMPLES = 150
# Real HTTP round trips are slower than hypothesis expects, and long texts are the point.
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
LOG_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+ ")

# Short text of any kind (all of Unicode but surrogates, control characters included), plus long
# text to reach and cross the byte limit.
messages = st.one_of(
    st.text(min_size=1, max_size=40),
    st.text(min_size=1, max_size=300),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=900, max_size=1400),
    st.text(alphabet=st.sampled_from("aé€😀\n\r\x1b%&=+#?/ "), min_size=1000, max_size=4200),
)


@pytest.fixture(scope="module", params=["gunicorn", "dev"])
def live_chain(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[ServiceProcess, ServiceProcess]
]:
    """A real A and a real B wired to it, shared by the examples of this module, in each server mode."""
    log_dir: Path = tmp_path_factory.mktemp(f"props-{request.param}")
    a = start_service("a", log_dir, mode=request.param)
    try:
        b = start_service("b", log_dir, mode=request.param, a_port=a.port)
    except BaseException:
        a.cleanup()
        raise
    yield a, b
    b.cleanup()
    a.cleanup()


def request_line_length(path: str, msg: str) -> int:
    """Bytes in the request line a client sends for ``path?msg=<msg>`` (fully percent-encoded)."""
    return len(f"GET {path}?msg={quote(msg, safe='')} HTTP/1.1")


def check_answer(response: requests.Response, msg: str, path: str, line_limit: int, body: dict[str, Any]) -> None:
    """200 with ``body`` when ``msg`` is within every limit; otherwise a JSON 414 naming the limit."""
    size = len(msg.encode("utf-8"))
    if request_line_length(path, msg) > line_limit:
        # The server's own limit, before any app code: gunicorn's JSON 414 names it.
        assert response.status_code == 414, response.text[:300]
        assert f"> {line_limit})" in response.json()["details"]
    elif size > MAX_MSG_BYTES:
        assert response.status_code == 414, response.text[:300]
        assert response.json() == {"error": f"'msg' parameter too long: {size} bytes, the limit is {MAX_MSG_BYTES}"}
    elif (
        path == "/call-echo"
        and request_line_length("/echo", msg) > MAX_REQUEST_LINE_BYTES
        and response.status_code == 414
    ):
        # B refuses what it could not send to a production A. Fully percent-encoded is the longest
        # B's own encoding can be, so only messages past that bound may be refused this way.
        assert response.json()["error"] == "'msg' parameter too long"
        assert f"the limit is {MAX_REQUEST_LINE_BYTES}" in response.json()["details"]
    else:
        assert response.status_code == 200, (size, response.text[:300])
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == body


def line_limit(mode: str) -> int:
    return MAX_REQUEST_LINE_BYTES if mode == "gunicorn" else DEV_REQUEST_LINE


def assert_one_record_per_line(service: ServiceProcess) -> None:
    """Every physical line of the service's log starts a record: nothing a client sent split a line."""
    lines = service.log_lines()
    stray = [line for line in lines if not LOG_RECORD_START.match(line)]
    assert not stray, f"lines that do not start a log record: {stray[:5]}"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=SLOW_OK, database=None)
@given(msg=messages)
def _round_trip_b(live: tuple[ServiceProcess, ServiceProcess], sent: list[str], msg: str) -> None:
    _, b = live
    request_id = uuid.uuid4().hex
    sent.append(request_id)
    response = b.session.get(
        f"{b.url}/call-echo?msg={quote(msg, safe='')}", headers={"X-Request-ID": request_id}, timeout=10
    )
    assert response.headers.get("X-Request-ID", request_id) == request_id
    check_answer(response, msg, "/call-echo", line_limit(b.mode), {"msg": msg, "echo_response": {"echo": msg}})


def test_any_text_round_trips_through_b_and_a(live_chain):
    """Any non-empty text within the limits comes back from B exactly as sent (via A); longer text gets a
    JSON 414 naming the limit; B and A each log exactly one access line per request, and no log line is split."""
    a, b = live_chain
    sent: list[str] = []
    _round_trip_b(live_chain, sent)
    sentinel = uuid.uuid4().hex  # answered by the app, so once it is logged every earlier line is too
    b.get("/call-echo?msg=done", headers={"X-Request-ID": sentinel})
    b.wait_for_log(f"request_id={sentinel}")
    b_log, a_log = b.log_text(), a.log_text()
    for request_id in sent:
        b_access = re.findall(rf" GET /call-echo (\d{{3}}) [\d.]+ms request_id={request_id}$", b_log, re.MULTILINE)
        assert len(b_access) <= 1, f"{request_id}: {len(b_access)} access lines in B"
        if b_access:  # gunicorn answers an over-long request line itself, before the app logs anything
            a_access = re.findall(rf" GET /echo \d{{3}} [\d.]+ms request_id={request_id}$", a_log, re.MULTILINE)
            assert len(a_access) == (1 if b_access[0] == "200" else 0), f"{request_id}: A logged {a_access}"
    print(f"\n[properties] {b.mode}: {len(sent)} messages through B and A")
    assert_one_record_per_line(a)
    assert_one_record_per_line(b)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=SLOW_OK, database=None)
@given(msg=st.one_of(st.text(max_size=300), st.text(alphabet=st.characters(codec="utf-8"), max_size=1400)))
def _round_trip_a(a: ServiceProcess, msg: str) -> None:
    response = a.session.get(f"{a.url}/echo?msg={quote(msg, safe='')}", timeout=10)
    check_answer(response, msg, "/echo", line_limit(a.mode), {"echo": msg})


def test_any_text_round_trips_through_a_alone(live_chain):
    """A alone echoes any text within the limit exactly, the empty text included."""
    a, _ = live_chain
    _round_trip_a(a)
    assert_one_record_per_line(a)
