"""Fault fixtures: emulated pods as separate processes (so a test can kill one), a pod that accepts
and never answers, routers in this process (so a test can inspect their scheduler and tasks)."""
from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiohttp import web

from sagesched.emulator import EmulatedPod
from sagesched.router.server import RouterServer
from sagesched.router.settings import Backend, RouterSettings
from tests.conftest import eventually as shared_eventually, free_port, wait_for_port

MODEL = "emu-model"


class PodProcess:
    """`sagesched emulate-pod` in its own process: killing it is a pod dying (SIGKILL, no goodbye)."""

    def __init__(self, time_scale: float = 0.001, port: int | None = None) -> None:
        self.port = port or free_port()
        self.time_scale = time_scale
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "PodProcess":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sagesched", "emulate-pod", "--port", str(self.port), "--model", MODEL,
             "--time-scale", str(self.time_scale)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, timeout=30)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def pod_processes() -> Iterator[Callable[..., PodProcess]]:
    """Start emulated pod processes; every one still alive is killed at teardown."""
    started: list[PodProcess] = []

    def start(time_scale: float = 0.001) -> PodProcess:
        pod = PodProcess(time_scale).start()
        started.append(pod)
        return pod

    yield start
    for pod in started:
        pod.kill()


def router_settings(pod_urls: list[str], **overrides: object) -> RouterSettings:
    base: dict = dict(host="127.0.0.1", port=0, grpc_port=0, scrape_interval_s=0.05,
                      backends=[Backend(url=u, models=[MODEL]) for u in pod_urls])
    base.update(overrides)
    return RouterSettings(**base)


@pytest.fixture
async def make_router() -> AsyncIterator[Callable[..., Awaitable[RouterServer]]]:
    started: list[RouterServer] = []

    async def make(pod_urls: list[str], router_kwargs: dict | None = None, wait_for_pods: float = 10.0,
                   **overrides: object) -> RouterServer:
        server = await RouterServer(router_settings(pod_urls, **overrides), **(router_kwargs or {})).start(
            wait_for_pods=wait_for_pods)
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


# Faults take longer to play out than the operator's reconciles: a roomier deadline, finer polls.
eventually = functools.partial(shared_eventually, timeout=30.0, interval=0.02)


def assert_openai_error(body: object) -> dict:
    """`body` is OpenAI's error shape; returns its inner object."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return err


class FlakyPod(EmulatedPod):
    """An emulated pod whose generation endpoints answer 500 and whose /health answers 503 while
    `broken` (an engine whose GPU failed: metrics still scrape, work fails). With `health_fails`
    off, /health keeps saying all is well: an engine that cannot serve but passes its probe."""

    broken = False
    health_fails = True

    def _app(self) -> web.Application:
        app = super()._app()

        @web.middleware
        async def faults(request: web.Request, handler):
            if self.broken and request.method == "POST":
                return web.json_response({"error": {"message": "engine dead"}}, status=500)
            if self.broken and self.health_fails and request.path == "/health":
                return web.Response(status=503)
            return await handler(request)

        app.middlewares.append(faults)
        return app


class HungPod:
    """A raw asyncio server in front of an idle emulated pod's GET answers: GETs (/v1/models,
    /metrics, /health) get the real pod's canned replies, so the router scrapes it and sends it
    work; POSTs are read and then never answered — or, when the body asks for
    `after_first_event`, get headers and one SSE event before silence (a pod stuck mid-stream)."""

    def __init__(self, canned: dict[bytes, bytes]) -> None:
        self.canned = canned
        self.server: asyncio.Server | None = None
        self.open_connections: set[asyncio.StreamWriter] = set()
        self.hanging: set[asyncio.StreamWriter] = set()  # connections holding an unanswered POST
        self.posts = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> "HungPod":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ", 2)[:2]
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                if method == b"GET":
                    payload = self.canned.get(path, b"")
                    status = b"200 OK" if path in self.canned else b"404 Not Found"
                    writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(payload)).encode() + b"\r\n\r\n" + payload)
                    await writer.drain()
                    continue
                self.posts += 1
                self.hanging.add(writer)
                if b"after_first_event" in body:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    event = b'data: {"choices":[{"index":0,"text":" the","finish_reason":null}]}\n\n'
                    writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                    await writer.drain()
                await reader.read()  # until the router gives up and closes the connection
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.open_connections.discard(writer)
            self.hanging.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.open_connections):
                writer.close()
            await self.server.wait_closed()


@pytest.fixture
async def hung_pod() -> AsyncIterator[HungPod]:
    import aiohttp

    from sagesched.emulator import PodConfig, start_pods

    (real,) = await start_pods(1, PodConfig(model=MODEL, time_scale=0.001))
    canned = {}
    async with aiohttp.ClientSession() as session:
        for path in ("/v1/models", "/metrics", "/health"):
            async with session.get(real.base_url + path) as resp:
                canned[path.encode()] = await resp.read()
    await real.stop()
    pod = await HungPod(canned).start()
    yield pod
    await pod.stop()
