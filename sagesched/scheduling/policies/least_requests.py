"""`least-requests`: vLLM production-stack / Envoy LEAST_REQUEST style — fewest outstanding requests."""
from __future__ import annotations

from sagesched.scheduling.picker import Pick
from sagesched.scheduling.policies.base import Policy, register_policy


@register_policy
class LeastRequests(Policy):
    name = "least-requests"
    central_queue = False

    def default_pick(self) -> Pick:
        return Pick.weighted(("least-requests", 1.0))
