"""PodSnapshotStore: the same contract in process and in a real redis-server."""
from __future__ import annotations

import asyncio
import time

import pytest
import redis.exceptions

from sagesched.state.pod_store import InProcessPodStore, RedisPodStore
from sagesched.state.snapshot import PodSnapshot


def snap(name: str, policy: str = "p1", models=("m",), running: int = 0) -> PodSnapshot:
    return PodSnapshot(name=name, address=f"{name}:8000", models=list(models), namespace="ns",
                       policy=policy, num_running=running, scraped_at=time.time())


@pytest.fixture(params=["inprocess", "redis"])
async def store(request):
    if request.param == "inprocess":
        s = InProcessPodStore()
    else:
        s = RedisPodStore(request.getfixturevalue("redis_url"))
    yield s
    await s.close()


async def test_published_snapshots_are_listed_by_policy_and_by_model(store):
    await store.publish_many([snap("a"), snap("b", models=("m", "n")), snap("c", policy="p2", models=("n",))], ttl=30)
    assert [s.name for s in await store.list(policy="ns/p1")] == ["a", "b"]
    assert [s.name for s in await store.list(model="n")] == ["b", "c"]
    assert [s.name for s in await store.list(model="n", policy="ns/p2")] == ["c"]
    assert [s.name for s in await store.list()] == ["a", "b", "c"]
    assert (await store.get("ns/p1", "b")).models == ["m", "n"]


async def test_republishing_replaces_a_pods_snapshot(store):
    await store.publish(snap("a", running=1), ttl=30)
    await store.publish(snap("a", running=7), ttl=30)
    assert [s.num_running for s in await store.list(policy="ns/p1")] == [7]


async def test_deleting_a_pod_or_a_whole_policy(store):
    await store.publish_many([snap("a"), snap("b"), snap("c", policy="p2")], ttl=30)
    await store.delete("ns/p1", "a")
    assert [s.name for s in await store.list()] == ["b", "c"]
    assert await store.get("ns/p1", "a") is None
    await store.delete("ns/p1")
    assert [s.name for s in await store.list()] == ["c"]
    assert [s.name for s in await store.list(model="m")] == ["c"]


async def test_snapshots_of_a_dead_publisher_expire(store):
    await store.publish(snap("a"), ttl=0.2)
    await store.publish(snap("b"), ttl=30)
    assert len(await store.list()) == 2
    deadline = time.monotonic() + 5
    while [s.name for s in await store.list()] != ["b"]:
        assert time.monotonic() < deadline, "snapshot did not expire"
        await asyncio.sleep(0.05)
    assert await store.get("ns/p1", "a") is None
    assert [s.name for s in await store.list(model="m")] == ["b"]


async def test_redis_index_keys_expire_with_their_last_snapshot(redis_url):
    store = RedisPodStore(redis_url)
    try:
        await store.publish(snap("a"), ttl=0.2)
        deadline = time.monotonic() + 5
        while await store._redis.keys("sagesched:*"):
            assert time.monotonic() < deadline, await store._redis.keys("sagesched:*")
            await asyncio.sleep(0.05)
    finally:
        await store.close()


async def test_a_policys_configuration_is_published_and_deleted_with_it(store):
    assert await store.get_policy("ns/p1") is None
    await store.publish_policy("ns/p1", 3, {"name": "fcfs"})
    assert await store.get_policy("ns/p1") == (3, {"name": "fcfs"})
    await store.delete("ns/p1")
    assert await store.get_policy("ns/p1") is None


async def test_routers_applied_generations_lapse_with_their_reports(store):
    await store.report_applied("ns/p1", "r1", 2, ttl=30)
    await store.report_applied("ns/p1", "r2", 1, ttl=0.05)
    assert await store.applied("ns/p1") == {"r1": 2, "r2": 1}
    await asyncio.sleep(0.1)
    assert await store.applied("ns/p1") == {"r1": 2}


async def test_inflight_counts_sum_the_other_live_routers_reports(store):
    await store.publish_inflight("r1", {"a": 2, "b": 1}, ttl=30)
    await store.publish_inflight("r2", {"a": 3}, ttl=30)
    await store.publish_inflight("r3", {"a": 5}, ttl=0.05)
    await store.publish_inflight("r2", {"a": 1}, ttl=30)  # replaces r2's earlier report
    await asyncio.sleep(0.1)
    assert await store.inflight(exclude="r1") == {"a": 1}
    assert await store.inflight(exclude="r2") == {"a": 2, "b": 1}


async def test_a_redis_that_accepts_but_never_answers_fails_calls_within_the_timeout():
    """A partitioned Redis: the connection opens, nothing comes back. Every store call must fail
    within its socket timeout (the router's sync loop and the operator retry next round), not hang."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read what comes, answer nothing
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisPodStore(f"redis://127.0.0.1:{port}/0", timeout_s=0.3)
    try:
        for call in (store.inflight(exclude="me"), store.publish_inflight("me", {"pod-a": 1}, 5.0)):
            t0 = time.monotonic()
            with pytest.raises(redis.exceptions.TimeoutError):
                await asyncio.wait_for(call, 10)  # the bound on the test, not the behaviour under test
            assert time.monotonic() - t0 < 5
    finally:
        await store.close()
        for writer in held:
            writer.close()
        server.close()
