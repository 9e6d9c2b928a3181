"""Request IDs: a client's well-formed one is kept, anything else is replaced by a fresh one."""

from __future__ import annotations

import re

import pytest

from echokit.context import MAX_REQUEST_ID_LENGTH, accept_request_id, new_request_id


def test_a_fresh_request_id_is_32_hex_digits_and_never_repeats() -> None:
    """new_request_id looks like a W3C trace id and two calls differ."""
    first, second = new_request_id(), new_request_id()
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


@pytest.mark.parametrize("bad", ["", "has space", "a\nb", "x" * (MAX_REQUEST_ID_LENGTH + 1), None])
def test_a_malformed_request_id_is_replaced(bad: str | None) -> None:
    """Empty, spaced, multi-line, too long or missing: the answer is a fresh ID, never the input."""
    accepted = accept_request_id(bad)
    assert accepted != bad
    assert re.fullmatch(r"[0-9a-f]{32}", accepted)


@pytest.mark.parametrize("good", ["abc-123", "0af7651916cd43dd8448eb211c80319c", "a.b:c~d+e/f=g_h", "x" * 128])
def test_a_well_formed_request_id_is_kept(good):
    """Letters, digits and ._:~+/=- up to 128 characters pass through unchanged."""
    assert accept_request_id(good) == good
