"""Idle and slow HTTP clients are dropped after `client_timeout_s`; responses that take longer than
it, streams included, are not cut."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from sagesched.emulator import PodConfig, start_pods

from tests.router.conftest import MODEL

CLIENT_TIMEOUT = 0.3
CLOSE_WITHIN = CLIENT_TIMEOUT + 2.0  # the bound plus scheduling slack on a busy machine

HEADERS = (b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
           b"Content-Length: 100\r\n\r\n")


@pytest.fixture
async def real_time_pod():
    """One emulated pod in real time: a 150-token stream takes about a second, several timeouts."""
    (pod,) = await start_pods(1, PodConfig(model=MODEL, time_scale=1.0))
    yield pod
    await pod.stop()


async def _read_until_closed(port: int, sent: bytes) -> tuple[bytes, float]:
    """Open a raw connection, send `sent`, and read until the router closes it: (bytes, seconds)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    try:
        writer.write(sent)
        await writer.drain()
        received = await asyncio.wait_for(reader.read(), CLOSE_WITHIN)
        return received, loop.time() - started
    finally:
        writer.close()


@pytest.mark.parametrize("sent", [b"", HEADERS[:40], HEADERS[:-2]],
                         ids=["nothing", "half a request line", "headers without their end"])
async def test_a_client_short_of_complete_headers_is_dropped_after_the_timeout(pods, make_router, sent):
    router = await make_router([p.base_url for p in pods], client_timeout_s=CLIENT_TIMEOUT)
    received, waited = await _read_until_closed(router.port, sent)
    assert received == b""
    assert waited >= CLIENT_TIMEOUT * 0.9


async def test_a_client_that_withholds_its_body_gets_408_and_is_dropped(pods, make_router):
    router = await make_router([p.base_url for p in pods], client_timeout_s=CLIENT_TIMEOUT)
    received, waited = await _read_until_closed(router.port, HEADERS + b'{"model": "')
    assert received.startswith(b"HTTP/1.1 408 ")
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "client_timeout"
    assert waited >= CLIENT_TIMEOUT * 0.9


async def test_an_idle_keep_alive_connection_is_dropped_after_the_timeout(pods, make_router):
    router = await make_router([p.base_url for p in pods], client_timeout_s=CLIENT_TIMEOUT)
    received, _ = await _read_until_closed(router.port, b"GET /health HTTP/1.1\r\nHost: router\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 200 ") and b'{"status": "ok"}' in received


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "unary"])
async def test_a_response_longer_than_the_timeout_is_not_cut(real_time_pod, make_router, stream):
    router = await make_router([real_time_pod.base_url], client_timeout_s=CLIENT_TIMEOUT)
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 150, "ignore_eos": True, "stream": stream}
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        started = loop.time()
        async with session.post(f"{router.url}/v1/completions", json=body) as resp:
            assert resp.status == 200
            raw = await resp.read()
        took = loop.time() - started
    assert took > 2 * CLIENT_TIMEOUT  # else this test would not show anything
    if stream:
        events = [e for e in raw.split(b"\n\n") if e.startswith(b"data: {")]
        assert len(events) == 150 and raw.rstrip().endswith(b"data: [DONE]")
    else:
        assert json.loads(raw)["usage"]["completion_tokens"] == 150
