"""Shared building blocks of the distributed echo system.

Both services import this package for what they have in common: settings, request IDs,
request logging, JSON errors, metrics, lifecycle (readiness and draining) and the servers.
Service B's call to Service A and its resilience policies live in ``echokit.upstream`` and
``echokit.resilience``.
"""

__version__ = "1.0.0"
