"""Where a gateway request may go, as a thin layer over the configured policy.

The data plane may narrow a request to a subset of the pool (the protocol's subset hint), and the
picker owes it fallbacks after the first choice. Both belong inside the scheduler's dispatch pass —
the subset must hold when the policy chooses, and the runners-up are the pods the policy scored at
that moment — so the configured policy is wrapped rather than second-guessed afterwards: requests
the gateway did not register (standalone HTTP/gRPC ones) go to the inner policy untouched.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sagesched.distribution import LengthDistribution
from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.policies.base import PickContext, Policy
from sagesched.scheduling.scheduler import Scheduler
from sagesched.scheduling.types import PodView, SchedRequest


@dataclass
class Placement:
    """One gateway request's constraint (pod names; None = any) and, once chosen, its fallbacks."""

    subset: frozenset[str] | None
    fallbacks: list[str] = field(default_factory=list)


class GatewayPlacement(Policy):
    name = "gateway"

    def __init__(self, inner: Policy, max_fallbacks: int) -> None:
        self.inner = inner
        self.max_fallbacks = max_fallbacks
        # The scheduler reads this per instance; it must be the wrapped policy's answer.
        self.central_queue = inner.central_queue  # type: ignore[misc]
        self._requests: dict[str, Placement] = {}

    @classmethod
    def install(cls, scheduler: Scheduler, max_fallbacks: int) -> "GatewayPlacement":
        """Wrap `scheduler`'s policy once (several backends over one router share the wrapper)."""
        if isinstance(scheduler.policy, cls):
            return scheduler.policy
        return cls(scheduler.policy, max_fallbacks).attach(scheduler)

    def attach(self, scheduler: Scheduler) -> "GatewayPlacement":
        """Wrap `scheduler`'s policy with this wrapper: after a live configuration swap the new
        scheduler keeps the subsets of the requests it took over from the old one."""
        if scheduler.policy is not self:
            self.inner = scheduler.policy
            self.central_queue = self.inner.central_queue  # type: ignore[misc]
            scheduler.policy = self
        return self

    def expect(self, request_id: str, subset: frozenset[str] | None) -> Placement:
        placement = self._requests[request_id] = Placement(subset)
        return placement

    def forget(self, request_id: str) -> None:
        self._requests.pop(request_id, None)

    def distribution_for(self, req: SchedRequest) -> LengthDistribution:
        return self.inner.distribution_for(req)

    def rank(self, req: SchedRequest, poly: CostPolynomial, attained: int) -> float:
        return self.inner.rank(req, poly, attained)

    def choose(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> PodView | None:  # type: ignore[override]
        """The inner policy's choice among the allowed pods; None (the request waits, as when no
        pod has room) while none of its subset can take it. Fallbacks: the other allowed pods where
        the request would finish soonest, the default policy's score."""
        placement = self._requests.get(req.request_id)
        if placement is None:
            return self.inner.choose(req, pods, ctx)
        allowed = [p for p in pods if placement.subset is None or p.name in placement.subset]
        if not allowed:
            return None
        chosen = self.inner.choose(req, allowed, ctx)
        others = sorted((p for p in allowed if p is not chosen), key=ctx.free_kv, reverse=True)
        placement.fallbacks = [p.name for p in others[:self.max_fallbacks]]
        return chosen
