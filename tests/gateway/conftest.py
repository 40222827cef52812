"""Fixtures for gateway mode: real emulated pods, a real router with its ext_proc port, and an
ext_proc client that speaks to it the way Envoy does (the same xds-protos messages, one stream per
HTTP request)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from google.protobuf import struct_pb2

from sagesched.emulator import PodConfig, running_pods
from sagesched.router.gateway.envoy_config import find_envoy
from sagesched.router.gateway.protocol import LB_NAMESPACE, SERVED_KEY, SUBSET_KEY, SUBSET_NAMESPACE
from sagesched.router.server import RouterServer
from sagesched.router.settings import Backend, RouterSettings
from tests.conftest import free_port

MODEL = "emu-model"
Mode = processing_mode_pb2.ProcessingMode
DESTINATION = "x-gateway-destination-endpoint"


def envoy_binary() -> str:
    return find_envoy()


@pytest.fixture
async def pods() -> AsyncIterator[list]:
    async with running_pods(2, PodConfig(model=MODEL, time_scale=0.001)) as started:
        yield started


def endpoint(pod) -> str:
    return pod.base_url.split("://", 1)[1]


@pytest.fixture
async def make_gateway() -> AsyncIterator[Callable[..., Awaitable[RouterServer]]]:
    """Routers with the ext_proc picker on (HTTP and gRPC APIs off the critical path)."""
    started: list[RouterServer] = []

    async def make(backends: list[Backend], wait_for_pods: float = 10.0, **overrides) -> RouterServer:
        settings = RouterSettings(**{"host": "127.0.0.1", "port": 0, "grpc_port": None, "scrape_interval_s": 0.05,
                                     "ext_proc_port": free_port(), "backends": backends, **overrides})
        server = await RouterServer(settings).start(wait_for_pods=wait_for_pods)
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


def metadata(subset: list[str] | None = None, served: str | None = None) -> base_pb2.Metadata:
    """The metadata_context Envoy attaches: the subset hint and/or the served-endpoint report."""
    out = base_pb2.Metadata()
    if subset is not None:
        value = struct_pb2.Struct()
        value.update({SUBSET_KEY: subset})
        out.filter_metadata[SUBSET_NAMESPACE].CopyFrom(value)
    if served is not None:
        value = struct_pb2.Struct()
        value.update({SERVED_KEY: served})
        out.filter_metadata[LB_NAMESPACE].CopyFrom(value)
    return out


def headers(pairs: dict[str, str], end_of_stream: bool = False) -> ext_proc.HttpHeaders:
    return ext_proc.HttpHeaders(
        headers=base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]),
        end_of_stream=end_of_stream)


class EnvoyStream:
    """One ext_proc stream, driven message by message as Envoy's ext_proc filter drives it."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = ext_proc_grpc.ExternalProcessorStub(channel).Process()

    async def request_headers(self, path: str = "/v1/completions", *, end_of_stream: bool = False,
                              subset: list[str] | None = None, extra: dict[str, str] | None = None,
                              mode: int = Mode.FULL_DUPLEX_STREAMED, method: str = "POST") -> None:
        await self.call.write(ext_proc.ProcessingRequest(
            request_headers=headers({":method": method, ":path": path, ":authority": "gateway",
                                     "content-type": "application/json", **(extra or {})}, end_of_stream),
            metadata_context=metadata(subset=subset),
            protocol_config=ext_proc.ProtocolConfiguration(request_body_mode=mode, response_body_mode=mode)))

    async def request_body(self, body: bytes, chunks: int = 1) -> None:
        size = -(-len(body) // chunks)
        parts = [body[i:i + size] for i in range(0, len(body), size)]
        for i, part in enumerate(parts):
            await self.call.write(ext_proc.ProcessingRequest(
                request_body=ext_proc.HttpBody(body=part, end_of_stream=i == len(parts) - 1)))

    async def response_headers(self, status: int = 200, content_type: str = "text/event-stream",
                               served: str | None = None) -> None:
        await self.call.write(ext_proc.ProcessingRequest(
            response_headers=headers({":status": str(status), "content-type": content_type}),
            metadata_context=metadata(served=served)))

    async def response_body(self, chunk: bytes, end_of_stream: bool) -> None:
        await self.call.write(ext_proc.ProcessingRequest(
            response_body=ext_proc.HttpBody(body=chunk, end_of_stream=end_of_stream)))

    async def read(self) -> ext_proc.ProcessingResponse:
        return await asyncio.wait_for(self.call.read(), 10)


@pytest.fixture
async def envoy_channel() -> AsyncIterator[Callable[[RouterServer], grpc.aio.Channel]]:
    channels: list[grpc.aio.Channel] = []

    def connect(server: RouterServer) -> grpc.aio.Channel:
        channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{server.ext_proc_port}"))
        return channels[-1]

    yield connect
    for channel in channels:
        await channel.close()


def destination(response: ext_proc.ProcessingResponse, phase: str) -> tuple[list[str], list[str]]:
    """(header value, dynamic metadata value) of the picked endpoints, both split into lists."""
    common = getattr(response, phase).response
    header = {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}[DESTINATION]
    meta = response.dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields[DESTINATION].string_value
    return header.split(","), meta.split(",")


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """The server finishes a stream's bookkeeping after the client's last message; wait for it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def recorded(server: RouterServer, timeout: float = 5.0, count: int = 1) -> list:
    """Completion records of MODEL, once the router's background recording has written `count`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(records := await server.router.history.recent(MODEL)) < count:
        assert asyncio.get_running_loop().time() < deadline, "nothing recorded in time"
        await asyncio.sleep(0.005)
    return records
