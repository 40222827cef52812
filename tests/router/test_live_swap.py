"""A live configuration swap (a SageSchedPolicy edit reaching the router) with requests running and
queued at the router: none is lost, every one finishes under the scheduler that holds it, and the
gateway's subset wrapper moves to the new scheduler."""
from __future__ import annotations

import asyncio

import aiohttp

from sagesched.router.gateway.placement import GatewayPlacement
from sagesched.scheduling.config import SchedulerConfig
from tests.conftest import eventually
from tests.router.streams import LONG, SHORT, SHORTS, Stream, body, metric, slow_pods, start_router, stream  # noqa: F401


async def test_a_live_swap_loses_no_running_or_queued_request(slow_pods, make_router):
    pods = await slow_pods(1)
    server, url = await start_router(make_router, pods, preemption=False)  # the long one holds the pod
    router = server.router
    async with aiohttp.ClientSession() as session:
        long = Stream()
        tasks = [asyncio.create_task(stream(session, url, body(LONG), long))]
        await long.tokens.wait()
        tasks += [asyncio.create_task(stream(session, url, body(SHORT))) for _ in range(SHORTS)]
        await eventually(lambda: len(router.dispatcher.waiting) >= 2, what="requests queued at the router")
        running = router.scheduler.inflight()
        router.apply(SchedulerConfig(name="fcfs"), generation=2)
        assert running and router.scheduler.inflight() == running  # the new scheduler adopted the ledger
        done = await asyncio.gather(*tasks)
    assert [s.usage["completion_tokens"] for s in done] == [LONG] + [SHORT] * SHORTS
    assert all(s.status == 200 and len(s.ids) == 1 for s in done)
    assert await metric(url, "sagesched_policy_info", policy="fcfs", generation="2") == 1
    assert await metric(url, "sagesched_policy_info", policy="sagesched") == 0
    assert not router.dispatcher.requests and not router.scheduler.ledger.entries
    assert router.scheduler.queue_depth() == 0 and not router.scheduler.inflight()


async def test_the_gateway_wrapper_follows_a_swap_with_its_subsets(slow_pods, make_router):
    pods = await slow_pods(1)
    server, _ = await start_router(make_router, pods)
    router = server.router
    placement = GatewayPlacement.install(router.scheduler, max_fallbacks=2)
    router.on_swap.append(placement.attach)
    placement.expect("req-1", frozenset({"pod-a"}))
    router.apply(SchedulerConfig(name="llmd"), generation=3)
    assert router.scheduler.policy is placement
    assert placement.inner.name == "llmd" and not placement.central_queue
    assert placement._requests["req-1"].subset == frozenset({"pod-a"})
