"""The current request's ID, carried in a context variable so every log line can show it."""

from __future__ import annotations

import os
import random
import re
from contextvars import ContextVar

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_ENVIRON = "HTTP_X_REQUEST_ID"
MAX_REQUEST_ID_LENGTH = 128
# Where the request's trace id waits for the access line (set by echokit.tracing when tracing is on).
TRACE_ID_ENVIRON = "echokit.trace_id"
# When the server read the request (time.monotonic()); set by the gunicorn worker, read by admission.
ARRIVAL_ENVIRON = "echokit.arrival"

# Safe in a header, a log line and a URL: no spaces, quotes, control characters or separators.
_VALID_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:~+/=-]{{1,{MAX_REQUEST_ID_LENGTH}}}\Z")

current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)


# Request IDs come from this process's own generator, seeded from the OS and seeded again in every
# forked worker: os.urandom() per ID was a getrandom() system call on every request. IDs need to be
# unique, not secret.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    """A fresh random request ID: 32 hex characters, like a W3C trace id."""
    return f"{_ids.getrandbits(128):032x}"


def accept_request_id(candidate: str | None) -> str:
    """The client's request ID when it is well-formed, otherwise a fresh one (never the bad one)."""
    if candidate and _VALID_REQUEST_ID.match(candidate):
        return candidate
    return new_request_id()
