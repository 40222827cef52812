"""Start an aiohttp application on a port: one place for the runner/site dance that the router,
the pod emulator and the benchmarks' stand-in servers all need."""
from __future__ import annotations

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
