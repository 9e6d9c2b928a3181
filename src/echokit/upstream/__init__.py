"""Service B's calls to Service A: discovery, balancing, outlier ejection, hedging and the client.

``from echokit.upstream import EchoClient, UpstreamError`` is the public entry point; the parts are
pure units (injectable clock and random source) in :mod:`.discovery`, :mod:`.balancer`,
:mod:`.outlier`, :mod:`.hedging` and :mod:`.endpoints`.
"""

from echokit.upstream.client import (
    BAD_RESPONSE,
    MSG_TOO_LONG,
    RETRYABLE_STATUSES,
    UNAVAILABLE,
    EchoClient,
    UpstreamError,
)

__all__ = ["BAD_RESPONSE", "MSG_TOO_LONG", "RETRYABLE_STATUSES", "UNAVAILABLE", "EchoClient", "UpstreamError"]
