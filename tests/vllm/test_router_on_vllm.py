"""The router in front of a real vLLM (CPU build, small random-weight Llama), driven by the official
openai client. Everything asserted is behaviour — counts, order, names, errors — never time: the
servers share two cores with the tests, and on a busy machine this process may stall for seconds.

The last test kills `vllm_doomed`; keep it last.
"""
from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from sagesched.engines import vllm
from sagesched.router.settings import Backend
from sagesched.scheduling.preemption import DEFAULT_BUCKET_TOKENS

from tests.vllm.conftest import (BLOCK_SIZE, CLIENT_TIMEOUT, KV_BLOCKS, MAX_MODEL_LEN, MODEL, VllmServer,
                                 engine_metrics, eventually)

CHAT = [{"role": "user", "content": "hello there, please write a story"}]


def client_for(router) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0,
                              timeout=CLIENT_TIMEOUT)


async def router_metric(router, name: str) -> float:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{router.url}/metrics") as resp:
            text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture
async def router(vllm_priority: VllmServer, make_router):
    return await make_router([Backend(url=vllm_priority.url, scheduling="priority")])


async def test_router_discovers_the_model_and_reads_kv_capacity_from_the_server(router):
    models = await client_for(router).models.list()
    assert [m.id for m in models.data] == [MODEL]
    view = await eventually(lambda: next((v for v in router.router.pods.views() if v.eligible), None),
                            what="the server scraped")
    assert view.profile.kv_capacity_tokens == BLOCK_SIZE * KV_BLOCKS == 9216


async def test_completions_and_chat_stream_and_not_through_the_router(router):
    client = client_for(router)
    done = await client.completions.create(model=MODEL, prompt="hello there", max_tokens=7,
                                           extra_body={"ignore_eos": True},
                                           extra_headers={"X-Request-Id": "client-id-1"})
    assert done.usage.completion_tokens == 7 and done.choices[0].finish_reason == "length"
    assert done.id == "cmpl-client-id-1"  # vLLM names the request by the id the router forwarded

    chat = await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5,
                                                extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 5 and chat.choices[0].message.role == "assistant"

    stream = await client.completions.create(model=MODEL, prompt="count", max_tokens=6, stream=True,
                                             stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = [c async for c in stream]
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-2].choices[0].finish_reason == "length"

    # Usage in every event (continuous_usage_stats) still shows the router each token as it comes.
    # The router records a request once its last byte has left, so a client that has read the end
    # may look before that: wait for each request's record.
    await eventually(lambda: recorded(router, 3), what="three requests recorded")
    ttft_before = await router_metric(router, "sagesched_ttft_seconds_count")
    stream = await client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=4, stream=True, extra_body={"ignore_eos": True},
        stream_options={"include_usage": True, "continuous_usage_stats": True})
    chunks = [c async for c in stream]
    assert chunks[-1].usage.completion_tokens == 4
    await eventually(lambda: recorded(router, 4), what="the fourth request recorded")
    assert await router_metric(router, "sagesched_ttft_seconds_count") == ttft_before + 1


async def recorded(router, count: int) -> bool:
    return await router_metric(router, 'sagesched_requests_total{code="200"') == count


async def test_null_fields_reach_vllm_as_not_given(router):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "n": None, "stream": None}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{router.url}/v1/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()  # vLLM alone answers `n: null` with 400


async def test_the_server_refuses_whoever_lacks_its_api_key(vllm_priority: VllmServer, router):
    # So every answer the router got from it in these tests is owed to --upstream-api-key.
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{vllm_priority.url}/v1/models") as resp:
            assert resp.status == 401
        async with session.post(f"{vllm_priority.url}/v1/completions", json={"model": MODEL, "prompt": "x"}) as resp:
            assert resp.status == 401
    assert (await client_for(router).completions.create(model=MODEL, prompt="x", max_tokens=1)).choices


async def test_short_requests_overtake_a_long_one_on_a_one_sequence_server(router, vllm_priority: VllmServer):
    """With --max-num-seqs 1 and the priority policy, vLLM runs what waits in the router's order:
    while a blocker holds the only slot (minutes of decoding for this model), a long request and
    then three short ones queue at the engine; once the blocker is gone, the short ones finish
    before the long one, although it came first."""
    client = client_for(router)
    pod = next(iter(router.router.pods.pods.values()))
    finished: list[str] = []

    def engine_counts() -> tuple[int, int]:  # vLLM's own metrics, as the router scraped them
        return (pod.snapshot.num_running, pod.snapshot.num_waiting) if pod.snapshot else (0, 0)

    async def send(name: str, max_tokens: int):
        """Returns once vLLM accepted the request (its response headers came through the router)."""
        return name, await client.completions.create(model=MODEL, prompt=f"{name} request", max_tokens=max_tokens,
                                                      stream=True, extra_body={"ignore_eos": True})

    async def drain(name: str, stream) -> None:
        assert [c async for c in stream][-1].choices[0].finish_reason == "length"
        finished.append(name)

    blocker = await client.completions.create(model=MODEL, prompt="block", max_tokens=MAX_MODEL_LEN - 8,
                                              stream=True, extra_body={"ignore_eos": True})
    await blocker.__anext__()
    queued = [await send("long", 200)]
    await eventually(lambda: engine_counts() == (1, 1), what="the long request waiting behind the blocker")
    queued += await asyncio.gather(*(send(f"short-{i}", 4) for i in range(3)))
    await eventually(lambda: engine_counts() == (1, 4), what="four waiting behind the blocker")
    tasks = [asyncio.create_task(drain(name, stream)) for name, stream in queued]
    await blocker.close()  # the client leaves; vLLM aborts the blocker and picks the next by priority
    await asyncio.gather(*tasks)
    assert finished[-1] == "long", finished


async def test_vllm_exports_the_metric_names_the_router_reads(vllm_priority: VllmServer):
    text = await engine_metrics(vllm_priority)
    names = {line.split("{", 1)[0].split(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}
    for name in (vllm.RUNNING, vllm.WAITING, vllm.KV_USAGE, vllm.CACHE_CONFIG,
                 vllm.PROMPT_TOKENS + "_total", vllm.GENERATION_TOKENS + "_total",
                 vllm.PREEMPTIONS + "_total"):
        assert name in names, name


async def test_a_preempted_chat_stream_resumes_from_the_prefix_cache_as_one_stream(router, vllm_priority):
    """A long chat stream holds the only sequence; once it has streamed past the first refresh bucket,
    more short requests arrive than the engine buffer holds, and the policy stops the long one. vLLM
    aborts it (the router closed the connection) and later takes its continuation (the partial answer
    as a final assistant message, continue_final_message): the prefix cache still holds the first run's
    blocks, and the client reads one stream with the whole answer. The answer is four refresh buckets
    long: the policy may stop it at the shorts' arrival or at a later refresh, and a loaded machine can
    deliver the shorts a bucket late; a decision at the last refresh would meet the finished stream."""
    client = client_for(router)
    prompt = [{"role": "user", "content": " ".join(["write a long story about a cat"] * 30)}]
    hits_before = _metric_sum(await engine_metrics(vllm_priority), vllm.PREFIX_CACHE_HITS + "_total")
    answer = 4 * DEFAULT_BUCKET_TOKENS
    long = await client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=answer, stream=True,
                                                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    ids, finish, usage, pieces, shorts = set(), [], None, 0, []
    async for chunk in long:
        ids.add(chunk.id)
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces += 1
            finish += [choice.finish_reason] if choice.finish_reason else []
        if pieces == DEFAULT_BUCKET_TOKENS + 20:
            shorts = [asyncio.create_task(client.chat.completions.create(
                model=MODEL, messages=CHAT, max_tokens=4, extra_body={"ignore_eos": True})) for _ in range(6)]
    assert [r.usage.completion_tokens for r in await asyncio.gather(*shorts)] == [4] * 6
    assert len(ids) == 1 and finish == ["length"] and usage.completion_tokens == answer
    assert await router_metric(router, 'sagesched_preemptions_total{pod=') >= 1
    assert await router_metric(router, 'sagesched_resumes_total{pod=') >= 1
    hits = _metric_sum(await engine_metrics(vllm_priority), vllm.PREFIX_CACHE_HITS + "_total") - hits_before
    assert hits >= BLOCK_SIZE  # at least the prompt's first block was not computed again


def _metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_a_server_killed_mid_stream_ends_the_stream_with_an_error(vllm_doomed: VllmServer, make_router):
    router = await make_router([Backend(url=vllm_doomed.url)])
    client = client_for(router)
    stream = await client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=MAX_MODEL_LEN - 64,
                                                  stream=True, extra_body={"ignore_eos": True})
    first = await stream.__anext__()
    assert first.choices
    await vllm_doomed.pause()  # so the stream cannot have finished by the time the server dies
    vllm_doomed.kill()
    with pytest.raises(openai.APIError, match="pod"):
        async for _ in stream:
            pass
    # The router let go of the request and takes nothing new for the dead server.
    await eventually(lambda: not router.router.dispatcher.running, what="the request released")
    await eventually(lambda: not router.router.is_ready(), what="the dead server no longer counted as ready")
    with pytest.raises(openai.APIStatusError) as info:
        await client.completions.create(model=MODEL, prompt="anyone?", max_tokens=2)
    assert info.value.status_code == 503
