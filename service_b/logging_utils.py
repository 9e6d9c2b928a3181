"""Service B's logger: the shared echokit logging set up under the name ``service_b``."""

from __future__ import annotations

import logging

from echokit.logs import configure_logging
from echokit.settings import ServerSettings

LOGGER_NAME = "service_b"


def setup_logging(server: ServerSettings) -> logging.Logger:
    return configure_logging(LOGGER_NAME, server.log_level, server.log_format)
