"""`least-requests`: vLLM production-stack / Envoy LEAST_REQUEST style — fewest outstanding requests."""
from __future__ import annotations

from collections.abc import Sequence

from sagesched.scheduling.picker import least_requests_scorer, max_score_picker
from sagesched.scheduling.policies.base import PickContext, Policy, register_policy
from sagesched.scheduling.types import PodView, SchedRequest


@register_policy
class LeastRequests(Policy):
    name = "least-requests"
    central_queue = False

    def choose(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> PodView:
        return max_score_picker(pods, least_requests_scorer(req, pods), ctx.tick)
