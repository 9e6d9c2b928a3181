"""Which addresses B calls: every address each configured URL's host name resolves to.

``SERVICE_A_URL`` is a comma-separated list of base URLs. A literal IP is one endpoint and is never
re-resolved; a host name is every IPv4 and IPv6 address it resolves to, re-resolved every
``SERVICE_A_RESOLVE_SECONDS``. A failed resolution keeps the name's last good addresses and is
reported once per outage (``on_failure``), not once per interval.

Pure: the resolver and the clock are injected, so tests need neither DNS nor sleeps.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from echokit.resilience.clock import Clock

# host, port -> the addresses it resolves to (IPv4 and IPv6 text forms), in the resolver's order.
Resolver = Callable[[str, int], list[str]]


@dataclass(frozen=True)
class Target:
    """One configured base URL: where to connect and what to send as ``Host``."""

    url: str
    host: str  # as written (IPv6 without brackets)
    port: int
    path: str  # base path, no trailing slash
    host_header: str  # host[:port] exactly as configured

    @property
    def literal(self) -> bool:
        return _is_ip(self.host)


@dataclass(frozen=True)
class Address:
    """One endpoint: an IP address and port, plus the target it came from."""

    ip: str
    port: int
    target: Target

    @property
    def key(self) -> str:
        """``host:port`` as the metrics and /ready name it (IPv6 in brackets)."""
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def parse_targets(urls: Sequence[str]) -> list[Target]:
    """Targets for already-validated ``http://host[:port][/path]`` URLs."""
    targets = []
    for url in urls:
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 80
        netloc = parts.netloc.rpartition("@")[2]
        targets.append(Target(url, host, port, parts.path.rstrip("/"), netloc))
    return targets


def system_resolver(host: str, port: int) -> list[str]:
    """Every distinct address ``getaddrinfo`` gives for ``host`` (IPv4 and IPv6), in its order."""
    seen: dict[str, None] = {}
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family in (socket.AF_INET, socket.AF_INET6):
            seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Discovery:
    """The current set of addresses for ``targets``; ``refresh()`` re-resolves the host names.

    ``on_failure(target, error)`` is called when a name stops resolving (once, until it resolves
    again), ``on_recovery(target)`` when it resolves again.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        clock: Clock,
        resolver: Resolver = system_resolver,
        on_failure: Callable[[Target, str], None] | None = None,
        on_recovery: Callable[[Target], None] | None = None,
    ) -> None:
        self.targets = list(targets)
        self.clock = clock
        self.resolver = resolver
        self.on_failure = on_failure
        self.on_recovery = on_recovery
        self._known: dict[Target, list[str]] = {t: [t.host] for t in self.targets if t.literal}
        self._failing: set[Target] = set()
        self.last_refresh = float("-inf")

    @property
    def needs_resolution(self) -> bool:
        """True when some target is a host name (so periodic refreshes matter)."""
        return any(not t.literal for t in self.targets)

    def refresh(self) -> list[Address]:
        """Resolve every host name now and return the whole address set (last good set on failure)."""
        self.last_refresh = self.clock.now()
        for target in self.targets:
            if target.literal:
                continue
            try:
                ips = self.resolver(target.host, target.port)
                if not ips:
                    raise OSError("no addresses")
            except (OSError, UnicodeError) as exc:
                if target not in self._failing:
                    self._failing.add(target)
                    if self.on_failure is not None:
                        self.on_failure(target, str(exc) or type(exc).__name__)
                continue
            if target in self._failing:
                self._failing.discard(target)
                if self.on_recovery is not None:
                    self.on_recovery(target)
            self._known[target] = ips
        return self.addresses()

    def addresses(self) -> list[Address]:
        """The current set, each (ip, port) once, in configuration then resolver order."""
        seen: dict[tuple[str, int], Address] = {}
        for target in self.targets:
            for ip in self._known.get(target, []):
                seen.setdefault((ip, target.port), Address(ip, target.port, target))
        return list(seen.values())
