"""The ext_proc gRPC server of gateway mode: the Endpoint Picker, gRPC health, reflection.

Health answers the three service names the inference gateway and Kubernetes probe: `liveness`
(the process serves), `readiness` and the ExternalProcessor service itself (the picker has a pod
to pick: NOT_SERVING until the router knows a reachable one, and again whenever it knows none).
"""
from __future__ import annotations

import asyncio
import logging

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from sagesched.router.gateway.backend import RouterBackend
from sagesched.router.gateway.protocol import EXT_PROC_SERVICE
from sagesched.router.gateway.servicer import EndpointPicker, GatewaySettings
from sagesched.router.pipeline import Router

log = logging.getLogger(__name__)

LIVENESS, READINESS = "liveness", "readiness"


class ExtProcServer:
    def __init__(self, router: Router, host: str, port: int, fail_open: bool = False) -> None:
        self.router = router
        self.host = host
        self.port = port
        self.picker = EndpointPicker(RouterBackend(router), GatewaySettings(fail_open=fail_open))
        self._server: grpc.aio.Server | None = None
        self._watch: asyncio.Task | None = None

    async def start(self) -> "ExtProcServer":
        from grpc_health.v1 import health, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        self._server = grpc.aio.server()
        ext_proc_grpc.add_ExternalProcessorServicer_to_server(self.picker, self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (EXT_PROC_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        self.port = self._server.add_insecure_port(f"{self.host}:{self.port}")
        await self._server.start()
        await self._set(LIVENESS, True)
        await self._set_ready(self.router.is_ready())
        self._watch = asyncio.create_task(self._watch_readiness(), name="ext-proc-readiness")
        return self

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._server is not None:
            await self._server.stop(grace=1.0)

    async def _set(self, service: str, serving: bool) -> None:
        from grpc_health.v1 import health_pb2

        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set(service, status)

    async def _set_ready(self, ready: bool) -> None:
        await self._set(READINESS, ready)
        await self._set(EXT_PROC_SERVICE, ready)

    async def _watch_readiness(self) -> None:
        """Follow the router's pods at their own refresh period; health reports only changes."""
        ready = self.router.is_ready()
        while True:
            await asyncio.sleep(self.router.settings.scrape_interval_s)
            now = self.router.is_ready()
            if now != ready:
                log.info("ext_proc picker %s", "ready" if now else "not ready: no reachable pod")
                await self._set_ready(now)
                ready = now
