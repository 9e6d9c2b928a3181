"""The container's HEALTHCHECK: exit 0 if this container's service answers /health with 200.

One image runs either service, so this asks both addresses the settings give (one service runs
per container, the other port is closed) and succeeds if either answers. Standard library only:
it runs every few seconds and must stay cheap.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from echokit.settings import service_a_settings, service_b_settings

TIMEOUT_S = 2.0
WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 - a server listening everywhere is asked over loopback


def health_urls() -> list[str]:
    """``/health`` of Service A and of Service B, as this container's environment configures them."""
    urls = []
    for server in (service_a_settings().server, service_b_settings().server):
        host = "127.0.0.1" if server.host in WILDCARDS else server.host
        host = f"[{host}]" if ":" in host else host
        urls.append(f"http://{host}:{server.port}/health")
    return urls


def main() -> int:
    for url in health_urls():
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 - our own http URL
                if response.status == 200:
                    return 0
        except (urllib.error.URLError, OSError):
            continue
    print(f"unhealthy: no 200 from {' or '.join(health_urls())}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
