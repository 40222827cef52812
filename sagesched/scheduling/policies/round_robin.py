"""`round-robin`: what a Kubernetes Service does — no queue, no metrics, next pod in turn."""
from __future__ import annotations

from sagesched.scheduling.picker import Pick
from sagesched.scheduling.policies.base import Policy, register_policy


@register_policy
class RoundRobin(Policy):
    name = "round-robin"
    central_queue = False

    def default_pick(self) -> Pick:
        return Pick.weighted(picker="round-robin")
