"""Tenant fairness through the live router, on emulated one-sequence pods over real sockets.

Tenant A floods the queue; tenant B sends a few requests just after. With fairness on, the queue
alternates between them, so each of B's requests is dispatched behind at most a few of A's; with it
off (the default), B waits behind the whole flood.
"""
from __future__ import annotations

import asyncio

import aiohttp

from sagesched.router.parse import tenant_of
from sagesched.scheduling.config import SchedulerConfig
from tests.conftest import eventually
from tests.router.streams import body, metric, slow_pods, start_router, stream  # noqa: F401 (slow_pods: a fixture)

FLOOD = 30
FEW = 3
BOUND = 3  # A's dispatches any one B request may wait behind, once B is queued
A_KEY = {"Authorization": "Bearer sk-tenant-a-secret"}  # A is known by its API key, hashed
B_HEADER = {"x-sagesched-tenant": "b"}


def test_the_tenant_is_the_header_else_the_api_key_hashed() -> None:
    assert tenant_of({"x-sagesched-tenant": "b", "authorization": "Bearer sk-1"}) == "b"
    assert tenant_of({"x-team": "b"}, tenant_header="X-Team") == "b"
    hashed = tenant_of({"authorization": "Bearer sk-tenant-a-secret"})
    assert hashed.startswith("key-") and len(hashed) == 20 and "secret" not in hashed
    assert hashed == tenant_of({"authorization": "bearer  sk-tenant-a-secret "})
    assert tenant_of({"authorization": "Basic abc"}) == tenant_of({}) == ""


class DispatchLog:
    """The scheduler's submissions and dispatches, in order, by tenant."""

    def __init__(self, sched) -> None:
        self.events: list[tuple[str, str]] = []
        submit, dispatch = sched.submit, sched.dispatch

        def logged_submit(req, now):
            self.events.append(("submit", req.tenant))
            submit(req, now)

        def logged_dispatch(pods, now):
            released = dispatch(pods, now)
            self.events += [("dispatch", req.tenant) for req, _ in released]
            return released

        sched.submit, sched.dispatch = logged_submit, logged_dispatch

    def waits_of(self, tenant: str) -> list[int]:
        """For each of `tenant`'s dispatches, how many other tenants' dispatches came between the
        submission it answers (first in, first matched) and it."""
        pending: list[int] = []
        waits = []
        for kind, who in self.events:
            if who == tenant:
                if kind == "submit":
                    pending.append(0)
                else:
                    waits.append(pending.pop(0))
            elif kind == "dispatch":
                pending = [w + 1 for w in pending]
        return waits


async def flood_then_few(server, url: str) -> DispatchLog:
    log = DispatchLog(server.router.dispatcher.scheduler)
    dispatcher = server.router.dispatcher
    async with aiohttp.ClientSession() as session:
        flood = [asyncio.create_task(stream(session, url, body(20), headers=A_KEY)) for _ in range(FLOOD)]
        await eventually(lambda: len(dispatcher.waiting) + len(dispatcher.running) == FLOOD, interval=0.01,
                         what="the flood queued")
        before = len(dispatcher.waiting)  # the flood's hashed key is no configured tenant: "other"
        assert before >= await metric(url, "sagesched_tenant_queue_depth", tenant="other") >= len(dispatcher.waiting)
        few = [asyncio.create_task(stream(session, url, body(20), headers=B_HEADER)) for _ in range(FEW)]
        done = await asyncio.gather(*flood, *few)
    assert all(s.status == 200 for s in done)
    return log


async def test_with_fairness_on_a_tenant_is_served_within_a_bound_while_another_floods(slow_pods, make_router):
    pods = await slow_pods(1)
    server, url = await start_router(make_router, pods)
    server.router.apply(SchedulerConfig.from_spec(
        {"name": "fcfs", "fairness": {"enabled": True, "weights": {"b": 1}}}), 2)
    log = await flood_then_few(server, url)
    waits = log.waits_of("b")
    assert len(waits) == FEW and max(waits) <= BOUND, waits
    assert await metric(url, "sagesched_tenant_queue_depth", tenant="b") == 0


async def test_with_fairness_off_a_tenant_waits_behind_the_flood(slow_pods, make_router):
    pods = await slow_pods(1)
    server, url = await start_router(make_router, pods)
    server.router.apply(SchedulerConfig.from_spec({"name": "fcfs"}), 2)
    log = await flood_then_few(server, url)
    assert min(log.waits_of("b")) > FLOOD // 2


def test_fairness_comes_from_the_router_yaml_as_from_the_policy(tmp_path):
    """Without Kubernetes, the router's --config takes the same block as spec.policy.fairness."""
    from sagesched.router.settings import RouterSettings

    path = tmp_path / "router.yaml"
    path.write_text("fairness: {enabled: true, weights: {gold: 3}, tenantHeader: x-team}\n")
    config = RouterSettings.from_yaml(path).scheduler_config()
    assert config.fairness.enabled and config.fairness.weights == {"gold": 3.0}
    assert config.fairness.tenant_header == "x-team"
    assert config.build().fairness is not None
