"""The router's OpenAI HTTP API, end to end over real sockets with the official openai client."""
from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from tests.conftest import eventually
from tests.router.conftest import MODEL


def client_for(router) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)


async def test_chat_stream_through_router_keeps_content_and_usage(pods, make_router):
    router = await make_router([p.base_url for p in pods])
    client = client_for(router)
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello there"}], max_tokens=7, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    text, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == 7
    assert len([t for t in text if t]) == 7


async def test_stream_without_usage_request_gets_no_usage_chunk(pods, make_router):
    router = await make_router([p.base_url for p in pods])
    stream = await client_for(router).completions.create(model=MODEL, prompt="hi", max_tokens=3, stream=True,
                                                         extra_body={"ignore_eos": True})
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks)
    assert [c.choices[0].text for c in chunks] == [" the", " of", " and"]


async def test_non_streaming_completion_passes_through(pods, make_router):
    router = await make_router([p.base_url for p in pods])
    resp = await client_for(router).completions.create(model=MODEL, prompt="hi", max_tokens=5,
                                                       extra_body={"ignore_eos": True, "user_tag": "passed"})
    assert resp.choices[0].text == " the of and to in"
    assert resp.usage.completion_tokens == 5 and resp.usage.prompt_tokens == 1


async def test_models_lists_what_pods_serve(make_router):
    from tests.router.conftest import start_pods

    pods = await start_pods(1, "model-a") + await start_pods(1, "model-b")
    try:
        router = await make_router([p.base_url for p in pods])
        models = await client_for(router).models.list()
        assert sorted(m.id for m in models.data) == ["model-a", "model-b"]
    finally:
        for p in pods:
            await p.stop()


async def test_unknown_model_is_404_in_openai_shape(pods, make_router):
    router = await make_router([p.base_url for p in pods])
    with pytest.raises(openai.NotFoundError) as info:
        await client_for(router).completions.create(model="no-such-model", prompt="hi")
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"


async def test_malformed_body_is_400_in_openai_shape(pods, make_router):
    router = await make_router([p.base_url for p in pods])
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{router.url}/v1/chat/completions", data=b"{not json") as resp:
            assert resp.status == 400
            body = await resp.json()
        async with session.post(f"{router.url}/v1/chat/completions", json={"model": MODEL}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "messages"
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_full_queue_answers_429_with_retry_after(pods, make_router):
    # Metrics that are always stale make every pod ineligible, so requests stay queued.
    router = await make_router([p.base_url for p in pods], snapshot_max_age_s=-1.0, max_queue_per_model=1,
                               queue_timeout_s=30)
    client = client_for(router)
    first = asyncio.create_task(client.completions.create(model=MODEL, prompt="hi", max_tokens=2))
    await eventually(lambda: router.router.dispatcher.depth[MODEL] >= 1, interval=0.01, what="first request queued")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{router.url}/v1/completions", json={"model": MODEL, "prompt": "x"}) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["error"]["type"] == "rate_limit_error"
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)


async def test_queue_timeout_answers_504(pods, make_router):
    router = await make_router([p.base_url for p in pods], snapshot_max_age_s=-1.0, queue_timeout_s=0.2)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{router.url}/v1/completions", json={"model": MODEL, "prompt": "x"}) as resp:
            assert resp.status == 504
            assert (await resp.json())["error"]["code"] == "queue_timeout"
    assert router.router.dispatcher.depth[MODEL] == 0


async def test_client_disconnect_leaves_the_queue(pods, make_router):
    router = await make_router([p.base_url for p in pods], snapshot_max_age_s=-1.0, queue_timeout_s=30)
    session = aiohttp.ClientSession()
    task = asyncio.create_task(session.post(f"{router.url}/v1/completions", json={"model": MODEL, "prompt": "x"}))
    await eventually(lambda: router.router.dispatcher.depth[MODEL] >= 1, interval=0.01, what="request queued")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await session.close()
    await eventually(lambda: router.router.dispatcher.depth[MODEL] == 0, interval=0.01,
                     what="queue emptied after the client left")
    assert not router.router.dispatcher.waiting
    assert router.router.scheduler.queue_depth(MODEL) == 0


async def test_metrics_endpoint_exports_router_series(pods, make_router):
    router = await make_router([p.base_url for p in pods])
    await client_for(router).completions.create(model=MODEL, prompt="hi", max_tokens=2)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{router.url}/metrics") as resp:
            text = await resp.text()
        async with session.get(f"{router.url}/ready") as resp:
            assert resp.status == 200
    for name in ("sagesched_requests_total", "sagesched_dispatches_total", "sagesched_ttlt_seconds_bucket",
                 "sagesched_queue_wait_seconds_bucket", "sagesched_pod_snapshot_age_seconds",
                 "sagesched_predicted_output_tokens_bucket", "sagesched_actual_output_tokens_bucket"):
        assert name in text, name
    assert f'sagesched_requests_total{{code="200",model="{MODEL}"}} 1.0' in text


async def test_unreachable_predictor_falls_back_to_history_without_failing(pods, make_router):
    from tests.conftest import free_port

    router = await make_router([p.base_url for p in pods], predictor_address=f"127.0.0.1:{free_port()}",
                               predictor_deadline_s=0.005)
    resp = await client_for(router).completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                                       extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 2
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{router.url}/metrics") as r:
            text = await r.text()
    assert "sagesched_predictor_fallbacks_total" in text
    assert 'sagesched_predictor_fallbacks_total{reason="client_fallback"} 1.0' in text
