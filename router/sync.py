"""What a router shares through the pod store besides reading snapshots.

* In-flight counts: active-active routers each publish how many requests they have on every pod and
  read the others', so a pod's view counts requests other replicas sent since its last scrape.
* The policy: a router scoped to a SageSchedPolicy (`store_policy`) applies the scheduler
  configuration the operator publishes as soon as its generation changes, and reports the
  generation it serves so the operator can set the policy's `Applied` condition.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

from sagesched.scheduling.config import SchedulerConfig
from sagesched.state.pod_store import PodSnapshotStore, raise_if_cancelled

if TYPE_CHECKING:
    from sagesched.router.pipeline import Router

log = logging.getLogger(__name__)

MIN_REPORT_TTL_S = 5.0  # reports outlive a few missed rounds (a GC pause) but not a dead router for long


class StoreSync:
    def __init__(self, router: "Router", store: PodSnapshotStore) -> None:
        self.router = router
        self.store = store
        self.id = uuid.uuid4().hex[:12]
        self.interval = router.settings.scrape_interval_s
        self.ttl = max(MIN_REPORT_TTL_S, 10 * self.interval)
        self.generation = 0  # of the policy served; 0: the flags' configuration
        self._rejected: int | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: keep the last counts and configuration
                log.debug("store sync failed: %s", exc.__class__.__name__)
            raise_if_cancelled()
            await asyncio.sleep(self.interval)

    async def once(self) -> None:
        pods = self.router.pods.pods
        await self.store.publish_inflight(self.id, {n: len(p.inflight) for n, p in pods.items() if p.inflight},
                                          self.ttl)
        others = await self.store.inflight(exclude=self.id)
        for name, entry in pods.items():
            entry.others = others.get(name, 0)
        policy = self.router.settings.store_policy
        if policy:
            await self._follow(policy)

    async def _follow(self, policy: str) -> None:
        """Apply a newly published generation; report the one served."""
        published = await self.store.get_policy(policy)
        if published is not None and published[0] not in (self.generation, self._rejected):
            generation, spec = published
            try:
                config = SchedulerConfig.from_spec(spec)
            except ValueError as exc:  # the operator validated it: a newer router or operator version
                log.warning("policy %s generation %d not applied: %s", policy, generation, exc)
                self._rejected = generation
            else:
                self.router.apply(config, generation)
                self.generation = generation
                log.info("policy %s generation %d applied: %s", policy, generation, config.name)
        if self.generation:
            await self.store.report_applied(policy, self.id, self.generation, self.ttl)
