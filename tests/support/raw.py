"""HTTP requests sent byte for byte over a raw socket, for input no HTTP client would send."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["CLOSE", "RawAnswer", "raw_request"]

# The end of a request's headers: a Host header and "close", so the server ends the answer by closing.
CLOSE = b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n"


@dataclass
class RawAnswer:
    status: int | None
    headers: dict[str, str]
    body: bytes
    elapsed_s: float

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> RawAnswer:
    """Send ``data`` as is and read until the server closes (or ``timeout``): status, headers, body."""
    started = time.monotonic()
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer and close before reading everything we send.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass  # closing with unread input sends RST after the answer
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else None
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return RawAnswer(status, headers, body, time.monotonic() - started)


