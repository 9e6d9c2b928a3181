"""Service B's logging configuration, at the design document's path.

The setup is the one both services share, :func:`echokit.logs.configure_logging`, which
create_app calls (through :func:`echokit.web.create_base_app`) with the logger name ``service_b``.
"""

from echokit.logs import configure_logging

__all__ = ["configure_logging"]
