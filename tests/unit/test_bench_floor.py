"""bench/floor.py's leanest server answers as a server must, and its table reads the right differences."""

from __future__ import annotations

import json
from typing import Any

from bench import floor, run
from bench.baselines import floor_server

GET = b"GET /echo?msg=hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Request-ID: abc\r\n\r\n"


def test_complete_heads_are_split_off_and_a_partial_one_is_kept() -> None:
    """Two pipelined heads and the start of a third: two to serve, the third kept for the next read."""
    heads, rest = floor_server.split_heads(GET + GET + b"GET /ec")
    assert heads == [GET[:-4], GET[:-4]]
    assert rest == b"GET /ec"


def test_the_environ_has_the_request_line_and_every_header() -> None:
    """Method, path, query and protocol from the request line; each header as HTTP_*."""
    environ = floor_server.environ_for(GET[:-4], {"SCRIPT_NAME": ""})
    assert environ["REQUEST_METHOD"] == "GET"
    assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/echo", "msg=hello")
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["HTTP_HOST"] == "127.0.0.1:8080"
    assert environ["HTTP_X_REQUEST_ID"] == "abc"
    assert environ["SCRIPT_NAME"] == ""


def test_an_app_answer_gets_a_content_length_when_it_has_none() -> None:
    """The answer is a status line, the app's headers, a Content-Length and the joined body."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"echo": ', b'"hello"}']

    head, _, body = floor_server.answer(app, {}).partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [b"HTTP/1.1 200 OK", b"Content-Type: application/json", b"Content-Length: 17"]
    assert json.loads(body) == {"echo": "hello"}


def test_the_fixed_answer_is_the_echo_json_with_its_length() -> None:
    """The no-app row answers exactly what A answers, so every row does the same work for wrk."""
    head, _, body = floor_server.FIXED_ANSWER.partition(b"\r\n\r\n")
    assert json.loads(body) == {"echo": "hello"}
    assert f"Content-Length: {len(body)}".encode() in head.split(b"\r\n")


def measured(row: str, rps: float, cpu: float, rnd: int = 1) -> run.LoadResult:
    return run.LoadResult(
        mode=row, target="echo_c64", connections=64, round=rnd, requests=1000, duration_s=1.0, rps=rps,
        p50_ms=1.0, p99_ms=2.0, max_ms=3.0, errors=0, non_2xx=0, generator="wrk", cpu_us_per_req={"a": cpu},
    )


def test_rows_are_medians_over_rounds_and_the_reading_subtracts_the_rows() -> None:
    """Each row's figures are the median of its rounds; the reading gives Flask's own cost (flask -
    fixed), what A's features add (a_app - flask), what the production server adds (prod - a_app)
    and issue 13's target (bare / 1.3)."""
    results = [measured("fixed", 70000, c) for c in (14, 15, 16)]
    results += [measured("flask", 12000, 130), measured("a_app", 13000, 120), measured("prod", 11000, 150)]
    results += [measured("bare", 10000, 169), measured("bare", 9000, 171)]
    table = floor.summarize(results)
    assert table["fixed"]["cpu_us_per_req"] == 15
    assert table["bare"]["rps"] == 9500
    assert floor.reading(table) == {
        "target_cpu_us_per_req": 130.8, "flask_own_cpu_us_per_req": 115,
        "features_over_flask_us_per_req": -10, "prod_server_over_floor_us_per_req": 30,
    }


def test_a_row_that_did_not_run_is_left_out_of_the_reading() -> None:
    """Without the bare row there is no target, and nothing is made up for it."""
    table = floor.summarize([measured("prod", 11000, 150), measured("a_app", 13000, 120)])
    assert set(table) == {"prod", "a_app"}
    assert floor.reading(table) == {"prod_server_over_floor_us_per_req": 30}
