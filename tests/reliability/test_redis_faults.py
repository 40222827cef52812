"""Redis stopped and started again (a real redis-server, same port): the router keeps serving from
its last pod view, history writes are dropped and counted without delaying answers, and both the
pod store and the history reconnect by themselves."""
from __future__ import annotations

import asyncio
import time

import openai

from sagesched.state.history import RedisHistoryStore
from sagesched.state.pod_store import RedisPodStore
from sagesched.state.snapshot import PodSnapshot

from tests.reliability.conftest import MODEL, eventually

MAX_AGE = 1.0


async def publish(url: str, pod_url: str) -> None:
    store = RedisPodStore(url)
    snap = PodSnapshot(name="pod-0", address=pod_url.removeprefix("http://"), models=[MODEL], namespace="ns",
                       policy="p", scraped_at=time.time())
    await store.publish_many([snap], ttl=60)
    await store.close()


async def test_router_serves_through_a_redis_restart(redis_server, pod_processes, make_router):
    pod = pod_processes()
    await publish(redis_server.url, pod.url)
    router = await make_router([], redis_url=redis_server.url, snapshot_max_age_s=MAX_AGE, scrape_interval_s=0.1)
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=30)

    async def serve(n: int) -> None:
        for _ in range(n):
            resp = await client.completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                                   extra_body={"ignore_eos": True})
            assert resp.usage.completion_tokens == 2

    await serve(2)
    redis_server.stop()
    await eventually(lambda: router.router.pods._store_down_since is not None, what="outage noticed")
    # Past the snapshot's max age: without the outage rule the pod would now be stale and unusable.
    await asyncio.sleep(MAX_AGE * 1.5)
    await serve(3)
    await eventually(lambda: (router.router.metrics.registry.get_sample_value("sagesched_history_dropped_total")
                              or 0) >= 3, what="history writes counted as dropped")
    assert router.router.scheduler.inflight() == []

    redis_server.start()  # empty: the operator publishes again, routers reconnect on their own
    await publish(redis_server.url, pod.url)
    await eventually(lambda: router.router.pods._store_down_since is None, what="pod store reconnected")
    await serve(2)
    history = RedisHistoryStore(redis_server.url)
    try:
        for _ in range(300):
            if len(await history.recent(MODEL)) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len(await history.recent(MODEL)) >= 2, "history writes did not resume after the restart"
    finally:
        await history.close()
