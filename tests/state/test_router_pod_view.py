"""A router's view of the pods an operator publishes to Redis: through operator gaps, per policy,
with the engines' scheduling mode, under the operator's key prefix."""
from __future__ import annotations

import asyncio
import time

from sagesched.distribution import LengthDistribution
from sagesched.router.metrics import RouterMetrics
from sagesched.router.pods import PodSet
from sagesched.router.server import RouterServer
from sagesched.router.settings import RouterSettings
from sagesched.scheduling import SchedRequest
from sagesched.scheduling.ledger import Ledger
from sagesched.state.pod_store import InProcessPodStore, RedisPodStore
from sagesched.state.snapshot import PodSnapshot
from tests.conftest import eventually


def snap(name: str, policy: str = "p1", **fields) -> PodSnapshot:
    return PodSnapshot(name=name, address=f"10.0.0.1:{8000 + len(name)}", models=["m"], namespace="ns",
                       policy=policy, scraped_at=time.time(), **fields)


def age_gauge(metrics: RouterMetrics, pod: str) -> float | None:
    return metrics.registry.get_sample_value("sagesched_pod_snapshot_age_seconds", {"pod": pod})


async def started(store: RedisPodStore, **settings) -> PodSet:
    pods = PodSet(RouterSettings(scrape_interval_s=0.05, **settings), RouterMetrics(), Ledger(), store)
    await pods.start()
    assert await pods.wait_ready(5)
    return pods


async def test_pods_outlive_their_expired_snapshots_as_stale_then_are_dropped(redis_url):
    """An operator gap longer than the snapshots' TTL: the router keeps the pods, sends them nothing
    new, keeps their models (requests queue instead of 404) and their age gauge counting."""
    store = RedisPodStore(redis_url)
    await store.publish_many([snap("pod-a")], ttl=0.3)
    pods = await started(store, unlisted_pod_max_age_s=1.5)
    try:
        await eventually(lambda: pods.views() and not pods.views()[0].stale)
        await eventually(lambda: not pods.pods["pod-a"].listed, what="snapshot expired")
        (view,) = pods.views()
        assert view.stale and pods.serves("m")
        first = age_gauge(pods.metrics, "pod-a")
        await eventually(lambda: (pods.views(), age_gauge(pods.metrics, "pod-a"))[1] > first + 0.2,
                         what="the age gauge keeps counting")
        await eventually(lambda: "pod-a" not in pods.pods, what="dropped after the maximum age")
        assert age_gauge(pods.metrics, "pod-a") is None and not pods.serves("m")
    finally:
        await pods.stop()
        await store.close()


async def test_a_pod_the_operator_lists_again_takes_requests_again(redis_url):
    store = RedisPodStore(redis_url)
    await store.publish_many([snap("pod-a")], ttl=0.3)
    pods = await started(store)
    try:
        await eventually(lambda: not pods.pods["pod-a"].listed)
        await store.publish_many([snap("pod-a")], ttl=30)
        await eventually(lambda: not pods.views()[0].stale)
    finally:
        await pods.stop()
        await store.close()


async def test_router_reads_only_its_policys_pods_with_their_scheduling_mode(redis_url):
    store = RedisPodStore(redis_url)
    await store.publish_many([snap("pod-a", scheduling="priority"), snap("pod-b", policy="p2")], ttl=30)
    pods = await started(store, store_policy="ns/p1")
    try:
        await eventually(lambda: "pod-a" in pods.pods)
        assert list(pods.pods) == ["pod-a"] and pods.pods["pod-a"].priority_mode
    finally:
        await pods.stop()
        await store.close()


async def test_router_reads_snapshots_under_the_operators_redis_prefix(redis_url):
    publisher = RedisPodStore(redis_url, prefix="team-a")
    await publisher.publish_many([snap("pod-a")], ttl=30)
    server = RouterServer(RouterSettings(host="127.0.0.1", port=0, grpc_port=None, redis_url=redis_url,
                                         redis_prefix="team-a", scrape_interval_s=0.05))
    await server.start(wait_for_pods=5)
    try:
        assert list(server.router.pods.pods) == ["pod-a"]
    finally:
        await server.stop()
        await publisher.close()


async def test_active_active_routers_count_each_others_requests_on_shared_pods(redis_url):
    """Two routers on the same pods: each publishes its in-flight requests per pod and counts the
    other's in its pod view, so neither sees a pod the other just filled as empty."""
    from sagesched.router.pipeline import Router

    stores = [RedisPodStore(redis_url), RedisPodStore(redis_url)]
    await stores[0].publish_many([snap("pod-a", num_running=0)], ttl=30)
    routers = [Router(RouterSettings(scrape_interval_s=0.05), pod_store=s) for s in stores]
    try:
        for router in routers:
            await router.pods.start()
            await eventually(lambda: "pod-a" in router.pods.pods)
        sched = routers[0].scheduler
        for i in range(3):
            sched.submit(SchedRequest(f"r{i}", "m", 10, 0.0, LengthDistribution.point(5)), 0.0)
        assert len(sched.dispatch(routers[0].pods.views(), 0.0)) == 3
        await routers[0].sync.once()
        await routers[1].sync.once()
        (view,) = routers[1].pods.views()
        assert view.outstanding == 3
        sched.on_finish("r0", 0.0)
        await routers[0].sync.once()
        await routers[1].sync.once()
        assert routers[1].pods.views()[0].outstanding == 2
    finally:
        for router, store in zip(routers, stores):
            await router.pods.stop()
            await store.close()


class SwallowingStore(InProcessPodStore):
    """What redis-py 8.1 does now and then (seen about once in 150 router start/stop cycles against a
    real Redis): a cancellation that lands inside a command is consumed, and the command returns."""

    entered: asyncio.Event
    swallowed = False

    async def _swallow(self) -> None:
        self.entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if self.swallowed:  # once: so that a loop that misses it still ends the test when cancelled again
                raise
            self.swallowed = True

    async def list(self, *, policy: str | None = None, model: str | None = None) -> list[PodSnapshot]:
        await self._swallow()
        return await super().list(policy=policy, model=model)

    async def publish_inflight(self, router: str, counts: dict[str, int], ttl: float) -> None:
        await self._swallow()
        await super().publish_inflight(router, counts, ttl)


async def test_the_pod_store_loop_and_the_sync_loop_stop_when_the_store_swallows_their_cancellation():
    from sagesched.router.pipeline import Router

    store = SwallowingStore()
    store.entered = asyncio.Event()
    pods = PodSet(RouterSettings(scrape_interval_s=0.05), RouterMetrics(), Ledger(), store)
    await pods.start()
    await asyncio.wait_for(store.entered.wait(), 5)
    stop = asyncio.create_task(pods.stop())
    done, _ = await asyncio.wait({stop}, timeout=5)  # hung forever: the loop slept again after the swallowed cancel
    if not done:
        pods._tasks[0].cancel()  # the loop is back in the store call: this cancel gets through
    await stop
    assert done

    store.entered, store.swallowed = asyncio.Event(), False
    router = Router(RouterSettings(scrape_interval_s=0.05), pod_store=store)
    sync = asyncio.create_task(router.sync.run())
    await asyncio.wait_for(store.entered.wait(), 5)
    sync.cancel()
    done, _ = await asyncio.wait({sync}, timeout=5)
    if not done:
        sync.cancel()
    assert done and sync.cancelled()
