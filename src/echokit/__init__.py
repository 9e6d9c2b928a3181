"""Shared building blocks of the distributed echo system.

Both services import this package for what they have in common: settings, request IDs,
request logging, JSON errors, metrics, lifecycle (readiness and draining) and the servers.
Service B's call to Service A and its resilience policies live in ``echokit.upstream`` and
``echokit.resilience``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("distributed-echo-system")  # written once, in pyproject.toml
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"
