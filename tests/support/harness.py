"""Start the real services as processes on free ports, talk HTTP to them, stop them by PID.

Each service runs in its own session (process group), so pausing A (SIGSTOP) freezes the
gunicorn master and its workers together, and cleanup never touches a process we did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from tests.support.waiting import wait_until

__all__ = [
    "CLIENT_IDLE_LIMIT_S",
    "REPO",
    "Pair",
    "ServiceProcess",
    "free_port",
    "group_pids",
    "launch",
    "new_session",
    "port_is_closed",
    "start_service",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
GUNICORN = str(Path(PYTHON).with_name("gunicorn"))
APP_FACTORY = {"a": "service_a.app:create_app()", "b": "service_b.app:create_app()"}
START_TIMEOUT_S = 20.0

# The tests' HTTP client opens a new connection instead of reusing one idle this long. A client
# should give up an idle connection before the server does (the services' keep-alive is 5 s): a
# request sent just as the server closes it gets "Connection reset by peer" (a CI run reused one
# after exactly 5 s idle; reproduced 2 times in 24 at 5.00 s).
CLIENT_IDLE_LIMIT_S = 2.0


class _IdleLimitedPool(urllib3.HTTPConnectionPool):
    """urllib3's pool, except that a connection idle for ``CLIENT_IDLE_LIMIT_S`` is closed, not reused."""

    def _put_conn(self, conn: Any) -> None:
        if conn is not None:
            conn.echokit_idle_since = time.monotonic()
        super()._put_conn(conn)

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        idle_since = getattr(conn, "echokit_idle_since", None)
        if idle_since is not None and time.monotonic() - idle_since >= CLIENT_IDLE_LIMIT_S:
            conn.close()  # as urllib3 does with a connection it finds dropped: the next request reconnects
        return conn


class _IdleLimitedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {**self.poolmanager.pool_classes_by_scheme, "http": _IdleLimitedPool}


def new_session() -> requests.Session:
    """A ``requests.Session`` whose connections are never reused after ``CLIENT_IDLE_LIMIT_S`` idle."""
    session = requests.Session()
    session.mount("http://", _IdleLimitedAdapter())
    return session


def group_pids(pgid: int) -> list[int]:
    """The PIDs in process group ``pgid`` (a service's master and its workers), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        if int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_closed(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) != 0


@dataclass
class ServiceProcess:
    """One running service: its process, port, log file and an HTTP session to it."""

    name: str  # "a" or "b"
    mode: str  # "dev" (python service_x/app.py) or "gunicorn"
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    session: requests.Session = field(default_factory=new_session)
    host: str = "127.0.0.1"  # another loopback address (127.0.0.2-4) for replicas sharing a port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str, timeout: float = 5.0, **kwargs: object) -> requests.Response:
        return self.session.get(self.url + path, timeout=timeout, **kwargs)  # type: ignore[arg-type]

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_lines(self) -> list[str]:
        return self.log_text().splitlines()

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        """Poll /health until it answers 200, the process dies, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service {self.name} exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if requests.get(self.url + "/health", timeout=0.5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"service {self.name} not healthy after {timeout}s:\n{self.log_text()}")

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> str:
        """The first log line containing ``needle``, waiting up to ``timeout`` for it to appear."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if needle in line:
                    return line
            time.sleep(0.05)
        raise TimeoutError(f"no log line with {needle!r} in {timeout}s:\n{self.log_text()}")

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the service's whole process group (master and workers)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)

    def pause(self) -> None:
        self.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_group(signal.SIGCONT)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful shutdown) and wait for the exit code."""
        self.resume()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash), and reap it."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def cleanup(self) -> None:
        """Stop whatever is left of this service: resume, SIGTERM, then SIGKILL if needed."""
        if self.proc.poll() is None:
            try:
                self.resume()
                # To the master only: gunicorn's master stops its workers itself; SIGTERM to the
                # whole group makes the master wait out workers that already left.
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stray workers of our own group
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        self.session.close()


Pair = tuple[ServiceProcess, ServiceProcess]  # an A and a B wired to it


def service_env(
    name: str, port: int, a_port: int | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVICE_", "FAULT_", "OTEL_", "PROMETHEUS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    if name == "a":
        env["SERVICE_A_PORT"] = str(port)
    else:
        env["SERVICE_B_PORT"] = str(port)
        if a_port is not None:
            env["SERVICE_A_URL"] = f"http://127.0.0.1:{a_port}"
    env.update(extra or {})
    return env


def start_service(
    name: str,
    log_dir: Path,
    *,
    mode: str = "gunicorn",
    port: int | None = None,
    a_port: int | None = None,
    env: Mapping[str, str] | None = None,
    workers: int | None = None,
    wait: bool = True,
    host: str = "127.0.0.1",
) -> ServiceProcess:
    """Start Service ``name`` ("a" or "b") in ``mode`` ("dev", "gunicorn" or "literal") and wait for /health.

    "literal" is the benchmark's baseline, bench/literal/ (the design document taken literally).
    """
    port = port or free_port()
    full_env = service_env(name, port, a_port, env)
    if workers is not None:
        full_env["WEB_CONCURRENCY"] = str(workers)
    if host != "127.0.0.1":
        full_env[f"SERVICE_{name.upper()}_HOST"] = host
    if mode == "dev":
        command = [PYTHON, f"service_{name}/app.py"]
    elif mode == "gunicorn":
        command = [GUNICORN, "-c", "gunicorn.conf.py", APP_FACTORY[name]]
    elif mode == "literal":
        command = [PYTHON, f"bench/literal/service_{name}.py"]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    log_path = log_dir / f"service_{name}-{port}-{time.monotonic_ns()}.log"
    return launch(name, mode, command, port, full_env, log_path, host=host, wait=wait)


def launch(
    name: str,
    mode: str,
    command: list[str],
    port: int,
    env: Mapping[str, str],
    log_path: Path,
    *,
    cwd: Path = REPO,
    host: str = "127.0.0.1",
    wait: bool = True,
) -> ServiceProcess:
    """Start ``command`` in its own session, its output in ``log_path``, and (``wait``) poll its /health."""
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            command, cwd=cwd, env=dict(env), stdout=log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    service = ServiceProcess(name, mode, port, proc, log_path, host=host)
    if wait:
        try:
            service.wait_healthy()
        except BaseException:
            service.cleanup()
            raise
    return service
