"""Start an aiohttp application on a port: one place for the runner/site dance that the router,
the pod emulator and the benchmarks' stand-in servers all need; and find a free port for the
processes a benchmark or test starts."""
from __future__ import annotations

import socket
import ssl

from aiohttp import web


async def serve_app(app: web.Application, host: str, port: int, *, handler_cancellation: bool = False,
                    ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 = a free port); returns its runner (`cleanup()` stops it) and the
    bound port. A deep backlog, because benchmarks open thousands of connections at once;
    `handler_cancellation` makes a client's disconnect cancel its handler (how queued requests leave)."""
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096, ssl_context=ssl_context).start()
    return runner, runner.addresses[0][1]


def free_port() -> int:
    """A loopback port nothing listens on now (for a process that binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
