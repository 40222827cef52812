"""When a stream's response headers leave: with its first events when those are already there (one
write), otherwise at once — a client whose request waits at the engine behind others still learns
at once that it was accepted."""
from __future__ import annotations

import asyncio

import aiohttp

from tests.router.streams import LONG, Stream, body, slow_pods, start_router, stream  # noqa: F401


async def test_a_stream_waiting_at_the_engine_gets_its_headers_before_its_first_token(slow_pods, make_router):
    pods = await slow_pods(1)  # one sequence: a second request waits at the engine until the first ends
    server, url = await start_router(make_router, pods, policy="fcfs", preemption=False)
    async with aiohttp.ClientSession() as session:
        long = Stream()
        running = asyncio.create_task(stream(session, url, body(LONG), long))
        await long.tokens.wait()
        async with session.post(url + "/v1/completions", json=body(5, chat=False)) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
            assert not long.finish  # the pod is still busy with the long stream: no token of ours yet
            events = [line async for line in resp.content if line.startswith(b"data: ")]
        assert long.finish == ["length"] and events[-1] == b"data: [DONE]\n"
        await running
