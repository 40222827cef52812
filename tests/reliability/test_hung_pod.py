"""A pod that accepts connections and never answers: the router's timeouts fire, the client gets a
well-formed 504 (or an in-band error event mid-stream), and no router task is left behind."""
from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.reliability.conftest import MODEL, assert_openai_error, eventually

TIMEOUTS = dict(first_byte_timeout_s=0.5, idle_timeout_s=0.5, upstream_timeout_s=1.0)


def router_idle(router) -> bool:
    r = router.router
    return not r.scheduler.inflight() and not r.dispatcher.running and not r._background


async def test_hung_pod_times_out_every_kind_of_request_and_leaks_no_task(hung_pod, make_router):
    router = await make_router([hung_pod.url], **TIMEOUTS)
    tasks_before = len(asyncio.all_tasks())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for stream in (True, False):  # first-byte timeout (stream), total timeout (unary)
            body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "stream": stream}
            async with session.post(f"{router.url}/v1/completions", json=body) as resp:
                assert resp.status == 504
                assert assert_openai_error(await resp.json())["code"] == "upstream_timeout"
        # Idle timeout: headers and one event arrive, then silence.
        body = {"model": MODEL, "prompt": "hi", "stream": True, "hang": "after_first_event"}
        async with session.post(f"{router.url}/v1/completions", json=body) as resp:
            assert resp.status == 200
            raw = await resp.read()
    events = [e[6:] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]
    assert b'" the"' in events[0]
    assert assert_openai_error(json.loads(events[-1]))["code"] == "upstream_timeout"
    assert hung_pod.posts == 3
    await eventually(lambda: router_idle(router) and not hung_pod.hanging,
                     what="requests released and pod connections closed")
    await eventually(lambda: len(asyncio.all_tasks()) <= tasks_before, what="no leaked tasks")
