"""Clients' own `priority`: it orders the queue ahead of the policy, so it is bounded and, unless the
operator trusts clients with it, ignored."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import eventually
from tests.router.conftest import MODEL


async def queued_priorities(router, asked: list[int]) -> list[int]:
    """Queue one request per asked priority (the pods' metrics count as stale, so all wait) and
    return the priorities the scheduler's queue holds them under."""
    async with aiohttp.ClientSession() as session:
        calls = [asyncio.ensure_future(session.post(f"{router.url}/v1/completions",
                                                    json={"model": MODEL, "prompt": "hi", "priority": p}))
                 for p in asked]
        await eventually(lambda: router.router.dispatcher.depth[MODEL] == len(asked), interval=0.01,
                         what="all queued")
        held = {r.sched.priority for r in router.router.dispatcher.waiting.values()}
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    return sorted(held)


@pytest.mark.parametrize(("limit", "expected"), [(0, [0]), (10, [-10, 0, 3, 10])])
async def test_client_priority_is_ignored_by_default_and_clamped_when_enabled(pods, make_router, limit, expected):
    router = await make_router([p.base_url for p in pods], snapshot_max_age_s=-1.0, queue_timeout_s=30,
                               client_priority_limit=limit)
    assert await queued_priorities(router, [-1000, 0, 3, 2**31 - 1]) == expected


async def test_the_limit_is_a_policy_setting_that_a_live_configuration_changes(pods, make_router):
    """Trust in clients' priority belongs to the SageSchedPolicy (`spec.policy.queue.clientPriorityLimit`):
    a configuration applied live changes it for the requests that arrive next."""
    from sagesched.scheduling.config import SchedulerConfig

    router = await make_router([p.base_url for p in pods], snapshot_max_age_s=-1.0, queue_timeout_s=30)
    assert await queued_priorities(router, [-1000, 7]) == [0]
    await eventually(lambda: router.router.dispatcher.depth[MODEL] == 0, what="the cancelled requests gone")
    router.router.apply(SchedulerConfig.from_spec({"name": "sagesched", "queue": {"clientPriorityLimit": 5}}), 2)
    assert await queued_priorities(router, [-1000, 7]) == [-5, 5]
