"""The document's happy path against real processes, in both server modes."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("mode", ["dev", "gunicorn"])
def test_b_echoes_through_a_in_both_server_modes(chain, mode):
    """B answers the document's success body through a real A, under both servers."""
    a, b = chain(mode=mode)
    response = b.get("/call-echo?msg=hello")
    assert response.status_code == 200
    assert response.text == '{"msg":"hello","echo_response":{"echo":"hello"}}'
    assert a.get("/health").json() == {"status": "ok"}
