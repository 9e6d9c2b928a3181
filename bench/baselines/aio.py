"""aiohttp Services A and B for the comparison's asyncio baseline: BENCHMARK CODE ONLY.

One module, both services: ``python -m bench.baselines.aio a --port P --workers 2`` serves
``/health`` and ``/echo``; ``... b --port P --workers 2 --a-url http://127.0.0.1:PA`` serves
``/health`` and ``/call-echo``, calling A with one ``aiohttp.ClientSession`` per worker
(keep-alive pool, 2 s timeout). Same JSON bodies as the project; no logging or metrics.

Workers: the parent forks ``--workers`` children that each bind the port with SO_REUSEPORT and
run their own event loop (what gunicorn's aiohttp worker would do, without gunicorn). SIGTERM
to the parent stops the children, then the parent.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"echo": request.query.get("msg", "")})


def make_b(a_url: str) -> web.Application:
    app = web.Application()
    session_key = web.AppKey("session", ClientSession)

    async def client(app: web.Application) -> Any:
        async with ClientSession(
            a_url, connector=TCPConnector(limit=256), timeout=ClientTimeout(total=2.0)
        ) as session:
            app[session_key] = session
            yield

    async def call_echo(request: web.Request) -> web.Response:
        msg = request.query.get("msg")
        if not msg:
            return web.json_response({"error": "Missing 'msg' parameter"}, status=400)
        try:
            async with request.app[session_key].get("/echo", params={"msg": msg}) as response:
                if response.status != 200:
                    details = f"HTTP {response.status}"
                    return web.json_response({"error": "Service A unavailable", "details": details}, status=503)
                answer = await response.json()
        except (ClientError, TimeoutError) as exc:
            return web.json_response({"error": "Service A unavailable", "details": type(exc).__name__}, status=503)
        return web.json_response({"msg": msg, "echo_response": answer})

    app.cleanup_ctx.append(client)
    app.router.add_get("/health", health)
    app.router.add_get("/call-echo", call_echo)
    return app


def make_a() -> web.Application:
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/echo", echo)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("service", choices=("a", "b"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--a-url", default=os.environ.get("SERVICE_A_URL", "http://127.0.0.1:8080"))
    args = parser.parse_args(argv)
    children = []
    for _ in range(max(1, args.workers)):
        pid = os.fork()
        if pid == 0:  # a worker: its own event loop, the shared port through SO_REUSEPORT
            app = make_a() if args.service == "a" else make_b(args.a_url)
            web.run_app(app, host=args.host, port=args.port, reuse_port=True, access_log=None, print=None)
            os._exit(0)
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return status


if __name__ == "__main__":
    sys.exit(main())
