"""`round-robin`: what a Kubernetes Service does — no queue, no metrics, next pod in turn."""
from __future__ import annotations

from collections.abc import Sequence

from sagesched.scheduling.policies.base import PickContext, Policy, register_policy
from sagesched.scheduling.types import PodView, SchedRequest


@register_policy
class RoundRobin(Policy):
    name = "round-robin"
    central_queue = False

    def choose(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> PodView:
        return pods[ctx.tick % len(pods)]
