"""`sjf-mean`: shortest job first on the cost of the predicted mean length, non-preemptive.

What most length-aware schedulers do; it ignores the spread, so a request that is probably short but
possibly very long ranks as medium. For non-preemptive service this order is already optimal among
orders by expected size: it is the yardstick the refreshed Gittins index must beat.
"""
from __future__ import annotations

from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.policies.base import Policy, register_policy
from sagesched.scheduling.types import SchedRequest


@register_policy
class SjfMean(Policy):
    name = "sjf-mean"

    def rank(self, req: SchedRequest, poly: CostPolynomial, attained: int) -> float:
        return float(poly.at(min(self.distribution_for(req).mean, req.output_cap)))
