"""Live preemption through the router, against emulated vLLM pods over real sockets.

A pod runs one sequence at a time. A long stream starts; once it has streamed a while, a burst of short
requests arrives and queues at the router. The preemptive policy stops the long stream on its pod and
resumes it later as a continuation; the client must see one uninterrupted stream: the text an
uninterrupted request would have produced, one id, one finish reason, usage for the whole answer.
"""
from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest

from sagesched.emulator.text import generated_text

from tests.router.conftest import MODEL
from tests.router.streams import (LONG, SHORT, SHORTS, STARTED, Stream, body, long_then_shorts, metric,
                      slow_pods, start_router, stream)  # noqa: F401 (slow_pods: a fixture)


def assert_one_stream(stream: Stream, tokens: int) -> None:
    """What an uninterrupted request would have sent: every token's text in order, one id, one
    finish reason, usage for the whole answer."""
    assert stream.status == 200
    assert "".join(stream.text) == generated_text(tokens)
    assert len(stream.ids) == 1
    assert stream.finish == ["length"]
    assert stream.usage is not None and stream.usage["completion_tokens"] == tokens
    assert stream.usage["total_tokens"] == stream.usage["prompt_tokens"] + tokens


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
async def test_a_preempted_stream_resumes_as_one_stream_on_the_pod_that_caches_it(slow_pods, make_router, chat):
    pods = await slow_pods(1)
    server, url = await start_router(make_router, pods)
    async with aiohttp.ClientSession() as session:  # the same prompt with nothing else running
        alone = await stream(session, url, body(40, chat))
    long, shorts = await long_then_shorts(url, body(LONG, chat))

    assert_one_stream(long, LONG)
    assert long.usage["prompt_tokens"] == alone.usage["prompt_tokens"]
    for short in shorts:
        assert_one_stream(short, SHORT)
    preempted = await metric(url, "sagesched_preemptions_total", reason="index")
    assert preempted >= 1
    assert await metric(url, "sagesched_resumes_total", same_pod="true") == preempted
    # each resume found the first run's blocks in the pod's prefix cache
    assert await metric(pods[0].base_url, "vllm:prefix_cache_hits_total") >= preempted * (STARTED - 16)


async def test_the_official_client_reads_a_resumed_stream_as_one(slow_pods, make_router):
    pods = await slow_pods(1)
    server, url = await start_router(make_router, pods)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    parts, ids, finish, usage = [], set(), [], None
    shorts: list = []
    async with aiohttp.ClientSession() as session:
        answer = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "tell me a story"}], max_tokens=LONG, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for chunk in answer:
            ids.add(chunk.id)
            usage = chunk.usage or usage
            for choice in chunk.choices:
                parts.append(choice.delta.content or "")
                finish += [choice.finish_reason] if choice.finish_reason else []
            if len(parts) == STARTED:
                shorts = [asyncio.create_task(stream(session, url, body(SHORT))) for _ in range(SHORTS)]
        await asyncio.gather(*shorts)
    await client.close()
    assert "".join(parts) == generated_text(LONG)
    assert len(ids) == 1 and finish == ["length"] and usage.completion_tokens == LONG
    assert await metric(url, "sagesched_preemptions_total") >= 1


async def test_no_request_is_preempted_more_often_than_the_cap(slow_pods, make_router):
    pods = await slow_pods(1)
    server, url = await start_router(make_router, pods, max_preemptions_per_request=1)
    long, shorts = await long_then_shorts(url, body(LONG))
    more = await long_then_shorts(url, body(LONG))  # a second round: the same cap per request
    assert_one_stream(long, LONG)
    assert_one_stream(more[0], LONG)
    assert 1 <= await metric(url, "sagesched_preemptions_total") <= 2


@pytest.mark.parametrize(("extra", "headers", "reason"), [
    ({"logprobs": True, "top_logprobs": 1}, None, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, None, "tools"),
    ({"response_format": {"type": "json_object"}}, None, "structured_output"),
    ({}, {"x-sagesched-preemptible": "false"}, "client_opt_out"),
], ids=["logprobs", "tools", "structured", "opt-out"])
async def test_requests_a_continuation_cannot_reproduce_are_never_preempted(slow_pods, make_router, extra,
                                                                           headers, reason):
    pods = await slow_pods(1)
    server, url = await start_router(make_router, pods)
    long, shorts = await long_then_shorts(url, body(LONG, **extra), headers)
    assert long.status == 200 and long.usage["completion_tokens"] == LONG
    assert all(s.usage["completion_tokens"] == SHORT for s in shorts)
    assert await metric(url, "sagesched_unpreemptible_requests_total", reason=reason) == 1
    assert await metric(url, "sagesched_preemptions_total") == 0


async def test_preemption_off_leaves_streams_alone(slow_pods, make_router):
    pods = await slow_pods(1)
    server, url = await start_router(make_router, pods, preemption=False)
    long, shorts = await long_then_shorts(url, body(LONG))
    assert_one_stream(long, LONG)
    assert await metric(url, "sagesched_preemptions_total") == 0


async def test_a_pod_that_dies_while_a_request_is_paused_loses_nothing(slow_pods, make_router):
    """Two pods, a long stream on each; the first preemption stops its victim's pod at once, while
    the victim waits at the router: it resumes on the other pod and its client misses nothing."""
    pods = await slow_pods(2)
    server, url = await start_router(make_router, pods)
    dispatcher = server.router.dispatcher
    preempt, victims = dispatcher._preempt, []

    def preempt_and_kill(request_id: str, pod_name: str) -> None:
        preempt(request_id, pod_name)
        if not victims:
            victims.append(pod_name)
            asyncio.get_running_loop().create_task(next(p for p in pods if pod_name in p.base_url).stop())

    dispatcher._preempt = preempt_and_kill
    async with aiohttp.ClientSession() as session:
        longs = [Stream(), Stream()]
        tasks = [asyncio.create_task(stream(session, url, body(LONG), s)) for s in longs]
        await asyncio.gather(*(s.tokens.wait() for s in longs))
        await asyncio.gather(*(stream(session, url, body(SHORT)) for _ in range(2 * SHORTS)))
        await asyncio.gather(*tasks)
    assert victims, "no preemption happened"
    for long in longs:
        assert_one_stream(long, LONG)
    assert await metric(url, "sagesched_resumes_total", same_pod="false") >= 1

