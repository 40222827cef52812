"""Who a request is, and what of the client's travels with it: ids, null fields, the pod's own errors.

Clients choose their X-Request-Id (gRPC: request_id) freely and reuse them; the router must still
keep every request apart, answer with the client's id, and pass the pod's answers through as the
pod sent them.
"""
from __future__ import annotations

import asyncio

import aiohttp
import grpc

from sagesched.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.conftest import eventually
from tests.router.conftest import MODEL
from tests.router.test_http import client_for

SHARED_ID = "client-chosen-id"


async def _queue_depth(router) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{router.url}/metrics") as resp:
            text = await resp.text()
    line = next(ln for ln in text.splitlines() if ln.startswith("sagesched_queue_depth{"))
    return float(line.rsplit(" ", 1)[1])


async def test_concurrent_requests_sharing_a_client_id_are_all_served(pods, make_router):
    router = await make_router([p.base_url for p in pods], queue_timeout_s=10)
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 3, "ignore_eos": True}

    async def one(session: aiohttp.ClientSession, stream: bool) -> tuple[int, str, bytes]:
        async with session.post(f"{router.url}/v1/completions", json={**body, "stream": stream},
                                headers={"X-Request-Id": SHARED_ID}) as resp:
            return resp.status, resp.headers.get("X-Request-Id", ""), await resp.read()

    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(one(session, stream=i % 2 == 0) for i in range(12)))
    assert [status for status, _, _ in results] == [200] * 12
    assert {echoed for _, echoed, _ in results} == {SHARED_ID}
    assert not router.router.dispatcher.waiting and not router.router.dispatcher.running
    assert await _queue_depth(router) == 0
    # A later request is not refused by a leaked queue depth.
    assert (await client_for(router).completions.create(model=MODEL, prompt="x", max_tokens=1)).choices


async def test_grpc_requests_sharing_a_request_id_are_all_served_and_echo_it(pods, make_router):
    # Pods' metrics count as stale until all 12 are queued together, then fresh again.
    router = await make_router([p.base_url for p in pods], queue_timeout_s=10, snapshot_max_age_s=-1.0)
    async with grpc.aio.insecure_channel(router.grpc_target) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        msg = router_pb2.GenerateRequest(request_id=SHARED_ID, model=MODEL, prompt="hello",
                                         params=common_pb2.RequestParams(max_tokens=4, ignore_eos=True))
        calls = [asyncio.ensure_future(stub.Generate(msg)) for _ in range(12)]
        await eventually(lambda: router.router.dispatcher.depth[MODEL] == 12, interval=0.01, what="all queued")
        router.router.settings.snapshot_max_age_s = 5.0
        router.router.dispatcher.wake()
        replies = await asyncio.gather(*calls)
    assert [r.request_id for r in replies] == [SHARED_ID] * 12
    assert all(r.usage.completion_tokens == 4 for r in replies)


async def test_router_gives_each_request_its_own_id_when_the_client_sends_none(pods, make_router):
    router = await make_router([p.base_url for p in pods])
    async with aiohttp.ClientSession() as session:
        ids = []
        for _ in range(2):
            async with session.post(f"{router.url}/v1/completions",
                                    json={"model": MODEL, "prompt": "hi", "max_tokens": 1}) as resp:
                assert resp.status == 200
                ids.append(resp.headers["X-Request-Id"])
    assert ids[0] != ids[1] and all(i.startswith("req-") for i in ids)


async def test_a_request_id_that_cannot_be_a_header_is_refused(pods, make_router):
    router = await make_router([p.base_url for p in pods])
    async with grpc.aio.insecure_channel(router.grpc_target) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        try:
            await stub.Generate(router_pb2.GenerateRequest(request_id="two\nlines", model=MODEL, prompt="x"))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        else:
            raise AssertionError("a request id with a newline was accepted")


async def test_null_n_and_stream_mean_not_given_as_in_openai(pods, make_router):
    router = await make_router([p.base_url for p in pods])
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "n": None, "stream": None,
            "stream_options": None, "priority": None, "ignore_eos": True}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{router.url}/v1/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["usage"]["completion_tokens"] == 2


async def test_a_pods_plain_text_error_keeps_its_content_type(pods, make_router):
    # The emulated pod's HTTP server takes bodies up to 1 MiB, the router up to 8: the pod refuses
    # this one itself, in plain text, with 413.
    router = await make_router([p.base_url for p in pods])
    body = {"model": MODEL, "prompt": "x" * (2 << 20), "max_tokens": 1}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{router.url}/v1/completions", json=body) as resp:
            assert resp.status == 413
            assert resp.content_type == "text/plain"
            assert "Maximum request body size" in await resp.text()


async def test_a_pods_413_is_resource_exhausted_over_grpc(pods, make_router):
    router = await make_router([p.base_url for p in pods])
    async with grpc.aio.insecure_channel(router.grpc_target) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        try:
            await stub.Generate(router_pb2.GenerateRequest(model=MODEL, prompt="x" * (2 << 20)))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
        else:
            raise AssertionError("the pod's 413 did not reach the gRPC client")
