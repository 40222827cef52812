"""A running router: the core plus its HTTP and gRPC front ends, started and stopped together.

`RouterServer` is what `sagesched router` runs and what tests and the demo start in-process
(ports 0 pick free ones; `url` and `grpc_target` say where it listens).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from typing import Any

from aiohttp import web

from sagesched.http_serve import serve_app
from sagesched.router.http import build_app
from sagesched.router.pipeline import Router
from sagesched.router.settings import RouterSettings

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.1  # how often a draining router looks whether its last requests have finished


class RouterServer:
    def __init__(self, settings: RouterSettings, **router_kwargs: Any) -> None:
        self.settings = settings
        self._router_kwargs = router_kwargs
        self.router: Router | None = None
        self._runner: web.AppRunner | None = None
        self._grpc = None
        self._ext_proc: Any = None
        self.port: int | None = None
        self.grpc_port: int | None = None
        self.ext_proc_port: int | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def tls(self) -> bool:
        return bool(self.settings.tls_cert and self.settings.tls_key)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        return context

    @property
    def grpc_target(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host
        return f"{host}:{self.grpc_port}"

    async def start(self, wait_for_pods: float = 10.0) -> "RouterServer":
        kwargs = dict(self._router_kwargs)
        if self.settings.redis_url:
            from sagesched.state.history import RedisHistoryStore
            from sagesched.state.pod_store import RedisPodStore

            kwargs.setdefault("pod_store", RedisPodStore(self.settings.redis_url, prefix=self.settings.redis_prefix))
            kwargs.setdefault("history", RedisHistoryStore(self.settings.redis_url, maxlen=self.settings.history_maxlen))
        if self.settings.predictor_address and "predictor_client" not in kwargs:
            kwargs["predictor_client"] = self._predictor_client(kwargs)
        self.router = Router(self.settings, **kwargs)
        await self.router.start()
        if wait_for_pods and not await self.router.pods.wait_ready(wait_for_pods):
            log.warning("not every pod answered within %.0fs; serving anyway", wait_for_pods)
        # handler_cancellation: a client that disconnects cancels its handler, which is how a queued
        # request leaves the queue and a streaming one aborts its upstream request.
        self._runner, self.port = await serve_app(build_app(self.router), self.settings.host, self.settings.port,
                                                  handler_cancellation=True, ssl_context=self._ssl_context())
        if self.settings.grpc_port is not None:
            from sagesched.router.grpc_api import start_grpc

            self._grpc, self.grpc_port = await start_grpc(self.router, self.settings.host, self.settings.grpc_port)
        if self.settings.ext_proc_port:
            from sagesched.router.gateway.server import ExtProcServer

            self._ext_proc = await ExtProcServer(self.router, self.settings.host, self.settings.ext_proc_port,
                                                 self.settings.ext_proc_fail_open).start()
            self.ext_proc_port = self._ext_proc.port
        return self

    def _predictor_client(self, kwargs: dict[str, Any]):
        """The predictor service's asyncio client; its fallback is the router's history estimator."""
        from sagesched.predictor.client import ClientSettings, PredictorClient
        from sagesched.scheduling import HistoryEstimator

        estimator = kwargs.setdefault("estimator", HistoryEstimator())
        return PredictorClient(self.settings.predictor_address,
                               fallback=lambda q: estimator.predict(q.model, q.prompt_tokens),
                               settings=ClientSettings(deadline_s=self.settings.predictor_deadline_s))

    async def drain(self, grace_s: float) -> None:
        """Fail readiness (so load balancers send new requests elsewhere) and wait up to `grace_s`
        for every request in the router — queued, streaming, or held for Envoy — to finish. New
        requests that still arrive meanwhile are served."""
        assert self.router is not None
        self.router.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        dispatcher = self.router.dispatcher
        while dispatcher.requests and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        left = len(dispatcher.requests)
        if left:
            log.warning("shutting down with %d requests unfinished after %.0fs", left, grace_s)

    async def stop(self) -> None:
        if self._ext_proc is not None:
            await self._ext_proc.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.router is not None:
            store = self._router_kwargs.get("pod_store") or self.router.pods.store
            await self.router.stop()
            if store is not None:
                await store.close()
            if self.router.predictor_client is not None and "predictor_client" not in self._router_kwargs:
                await self.router.predictor_client.close()

    async def __aenter__(self) -> "RouterServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve_forever(settings: RouterSettings) -> None:
    log.info("starting router with %r", settings)  # the repr redacts the admin token and Redis password
    server = RouterServer(settings)
    await server.start()
    log.info("router listening on %s (gRPC %s, ext_proc %s), policy %s, %d static pods", server.url,
             server.grpc_target if server.grpc_port else "off", server.ext_proc_port or "off", settings.policy,
             len(settings.backends))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # A handler, not the default action: as PID 1 in a container a signal without one is ignored,
    # and without a drain every stream would be cut at once.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutdown signal: draining for up to %.0fs", settings.shutdown_grace_s)
        await server.drain(settings.shutdown_grace_s)
    finally:
        await server.stop()
