"""`sagesched`: Gittins index on the hybrid cost distribution (see scheduling/gittins.py)."""
from __future__ import annotations

from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.gittins import gittins_rank
from sagesched.scheduling.policies.base import Policy, register_policy
from sagesched.scheduling.types import SchedRequest


@register_policy
class SageSched(Policy):
    name = "sagesched"

    def rank(self, req: SchedRequest, poly: CostPolynomial) -> float:
        return gittins_rank(self.distribution_for(req), poly, req.output_cap, req.generated)
