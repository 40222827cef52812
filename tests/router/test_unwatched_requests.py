"""Requests whose tokens the router cannot watch as they come: non-streaming answers (they arrive
whole) and streams whose every event carries usage. Neither may hold a pod's admission shut."""
from __future__ import annotations

import asyncio

import aiohttp

from sagesched.emulator import PodConfig, start_pods
from tests.conftest import eventually
from tests.router.conftest import MODEL


async def test_non_streaming_requests_are_not_capped_by_the_waiting_gate(make_router):
    # One pod that decodes in half real time; 10 requests of 300 tokens each take over a second,
    # so all of them are at the pod together unless the router holds some back.
    pods = await start_pods(1, PodConfig(model=MODEL, time_scale=0.5))
    try:
        router = await make_router([pods[0].base_url])
        body = {"model": MODEL, "prompt": "hello", "max_tokens": 300, "ignore_eos": True}
        async with aiohttp.ClientSession() as session:
            async def one() -> dict:
                async with session.post(f"{router.url}/v1/completions", json=body) as resp:
                    assert resp.status == 200
                    return await resp.json()

            calls = asyncio.gather(*(one() for _ in range(10)))
            await eventually(lambda: len(router.router.dispatcher.running) == 10, timeout=5.0, interval=0.01,
                             what="all 10 non-streaming requests at the pod together")
            answers = await calls
        assert [a["usage"]["completion_tokens"] for a in answers] == [300] * 10
    finally:
        await pods[0].stop()


# A chat stream as vLLM 0.32 sends it with stream_options {include_usage, continuous_usage_stats}:
# every event carries usage, the opening one (role only) included; one event may hold two tokens.
CONTINUOUS_USAGE_EVENTS = [
    b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"role":'
    b'"assistant","content":""},"finish_reason":null}],"usage":{"prompt_tokens":24,"total_tokens":24,'
    b'"completion_tokens":0}}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":'
    b'"of"},"finish_reason":null}],"usage":{"prompt_tokens":24,"total_tokens":25,"completion_tokens":1}}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":'
    b'"dog"},"finish_reason":"length"}],"usage":{"prompt_tokens":24,"total_tokens":27,"completion_tokens":3}}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[],"usage":{"prompt_tokens":24,'
    b'"total_tokens":27,"completion_tokens":3}}\n\n',
    b"data: [DONE]\n\n",
]


def test_a_stream_with_usage_in_every_event_reports_first_token_and_exact_counts():
    from sagesched.router.parse import parse_request
    from sagesched.router.proxy import Upstream
    from sagesched.router.request import Api

    req = parse_request(Api.CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                                   "stream_options": {"include_usage": True, "continuous_usage_stats": True}}, 0.0)
    clock = iter(range(1, 100))
    progress: list[int] = []
    forwarded = [Upstream.accounted(req, [e], None, lambda: float(next(clock)),
                                    lambda: progress.append(req.output_tokens)) for e in CONTINUOUS_USAGE_EVENTS]
    assert forwarded == [[e] for e in CONTINUOUS_USAGE_EVENTS]
    assert req.first_token_at == 1.0  # the first content event, not the role event before it
    assert progress == [1, 3]  # one report per read that holds tokens, with the pod's exact count
    assert req.output_tokens == 3 and req.finish_reason == "length"


def test_events_that_arrive_in_one_read_reach_the_scheduler_as_one_progress_report():
    from sagesched.router.parse import parse_request
    from sagesched.router.proxy import Upstream
    from sagesched.router.request import Api

    req = parse_request(Api.CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                                   "stream_options": {"include_usage": True, "continuous_usage_stats": True}}, 0.0)
    progress: list[int] = []
    run = Upstream.accounted(req, CONTINUOUS_USAGE_EVENTS, None, lambda: 1.0,
                             lambda: progress.append(req.output_tokens))
    assert run == CONTINUOUS_USAGE_EVENTS
    assert progress == [3]  # the read's last count, once
