"""Shared-state modes: pods announced through a PodSnapshotStore and completions recorded into a
history store. Redis (a real redis-server) and the in-process stores pass the same tests."""
from __future__ import annotations

import time

import openai
import pytest

from sagesched.state.history import CompletionRecord, InProcessHistoryStore, RedisHistoryStore
from sagesched.state.pod_store import InProcessPodStore, RedisPodStore
from sagesched.state.snapshot import PodSnapshot
from tests.conftest import eventually
from tests.router.conftest import MODEL


@pytest.fixture(params=["in-process", "redis"])
def stores(request):
    """(pod store, history store, redis_url or None) of one mode."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return RedisPodStore(url), RedisHistoryStore(url, maxlen=50), url
    return InProcessPodStore(), InProcessHistoryStore(maxlen=50), None


def record(i: int, model: str = "m") -> CompletionRecord:
    return CompletionRecord(request_id=f"r{i}", model=model, prompt_tokens=10 + i, output_tokens=i + 1,
                            finish_reason="stop", prompt="p" * 5000)


async def test_history_keeps_recent_completions_per_model_oldest_first(stores):
    _, history, _ = stores
    for i in range(5):
        await history.append(record(i))
    await history.append(record(99, model="other"))
    recent = await history.recent("m", limit=3)
    assert [r.request_id for r in recent] == ["r2", "r3", "r4"]
    assert recent[0].output_tokens == 3 and len(recent[0].prompt) == 2000  # prompts are bounded
    assert await history.models() == ["m", "other"]
    await history.close()


async def test_history_is_bounded(stores):
    _, history, _ = stores
    for i in range(400):
        await history.append(record(i))
    kept = await history.recent("m")
    # Redis trims approximately (MAXLEN ~): whole nodes go, so a few extra may remain.
    assert 50 <= len(kept) < 400
    assert kept[-1].request_id == "r399"
    await history.close()


async def test_router_routes_to_pods_from_the_store_and_records_history(stores, pods, make_router):
    pod_store, history, redis_url = stores
    snaps = [PodSnapshot(name=f"pod-{i}", address=p.base_url.split("://")[1], models=[MODEL], namespace="ns",
                         policy="p", scraped_at=time.time() + 60) for i, p in enumerate(pods)]
    await pod_store.publish_many(snaps, ttl=60)
    router = await make_router([], router_kwargs={"pod_store": pod_store, "history": history},
                               redis_url=redis_url)
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    for _ in range(4):
        stream = await client.completions.create(model=MODEL, prompt="hi", max_tokens=3, stream=True,
                                                 extra_body={"ignore_eos": True})
        assert len([c async for c in stream if c.choices]) == 3

    async def four_recorded():  # recording runs after the answer
        recorded = await history.recent(MODEL)
        return recorded if len(recorded) >= 4 else None

    recorded = await eventually(four_recorded, interval=0.01, what="4 completions recorded")
    assert {r.pod for r in recorded} <= {"pod-0", "pod-1"}
    assert all(r.output_tokens == 3 and r.finish_reason == "length" for r in recorded)
