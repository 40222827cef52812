"""A burst far beyond capacity: the bounded queue refuses the excess at once (429 + Retry-After),
queued requests time out cleanly (504), memory stays bounded, and the router takes work again
afterwards. Capacity is made tiny and exact with a pod that never answers: the router dispatches
only its engine buffer to it (its metrics are read once, so our own accounting fills it)."""
from __future__ import annotations

import asyncio
import tracemalloc
from collections import Counter

import aiohttp

from tests.reliability.conftest import MODEL, assert_openai_error

BURST = 300
MAX_QUEUE = 20


async def post(session: aiohttp.ClientSession, url: str) -> tuple[int, str, dict]:
    async with session.post(url, json={"model": MODEL, "prompt": "hi", "max_tokens": 4}) as resp:
        code = assert_openai_error(await resp.json())["code"]
        return resp.status, code, dict(resp.headers)


async def test_burst_is_refused_or_timed_out_cleanly_with_bounded_memory(hung_pod, make_router):
    router = await make_router([hung_pod.url], scrape_interval_s=60, max_queue_per_model=MAX_QUEUE,
                               queue_timeout_s=1.0, upstream_timeout_s=2.0,
                               eject_after_failures=10**6)  # this test is about the queue, not ejection
    url = f"{router.url}/v1/completions"
    tracemalloc.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            results = await asyncio.gather(*(post(session, url) for _ in range(BURST)))
            _, peak = tracemalloc.get_traced_memory()
            outcomes = Counter((status, code) for status, code, _ in results)
            dispatched = outcomes[(504, "upstream_timeout")]
            # At most MAX_QUEUE wait at once; a request dispatched from the queue frees its place.
            assert 0 < dispatched < MAX_QUEUE and outcomes[(504, "queue_timeout")] > 0
            assert BURST - MAX_QUEUE - dispatched <= outcomes[(429, "queue_full")] <= BURST - MAX_QUEUE
            assert set(outcomes) == {(504, "upstream_timeout"), (504, "queue_timeout"), (429, "queue_full")}
            retry_after = {int(h["Retry-After"]) for status, _, h in results if status == 429}
            assert min(retry_after) >= 1
            # Everything let go: no queue, nothing in flight, no background work piling up.
            r = router.router
            assert r.dispatcher.depth[MODEL] == 0 and not r.dispatcher.waiting
            assert r.scheduler.inflight() == [] and not r.dispatcher.running
            # Recovered: a new request is admitted and dispatched again (the pod still never answers).
            status, code, _ = await post(session, url)
            assert (status, code) == (504, "upstream_timeout")
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"overload: {dict(outcomes)}; traced peak {peak / 2**20:.1f} MiB, after {current / 2**20:.1f} MiB")
    assert peak < 64 * 2**20  # a few hundred requests cost kilobytes each, not megabytes
