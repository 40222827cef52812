"""Fixtures for router tests: real pods on loopback and real routers in front of them."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sagesched.emulator import PodConfig, start_pods as start_emulated_pods
from sagesched.router.server import RouterServer
from sagesched.router.settings import Backend, RouterSettings

MODEL = "emu-model"


async def start_pods(count: int, model: str = MODEL) -> list:
    """Emulated vLLM pods running 1000x faster than real time."""
    return await start_emulated_pods(count, PodConfig(model=model, time_scale=0.001))


@pytest.fixture
async def pods() -> AsyncIterator[list]:
    started = await start_pods(2)
    yield started
    for pod in started:
        await pod.stop()


def router_settings(pod_urls: list[str], **overrides) -> RouterSettings:
    base = dict(host="127.0.0.1", port=0, grpc_port=0, scrape_interval_s=0.05,
                backends=[Backend(url=u) for u in pod_urls])
    base.update(overrides)
    return RouterSettings(**base)


@pytest.fixture
async def make_router() -> AsyncIterator[Callable[..., Awaitable[RouterServer]]]:
    """Start routers (ports chosen by the OS); every one started is stopped at teardown."""
    started: list[RouterServer] = []

    async def make(pod_urls: list[str], router_kwargs: dict | None = None, **overrides) -> RouterServer:
        server = await RouterServer(router_settings(pod_urls, **overrides), **(router_kwargs or {})).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()
