"""`sjf-mean`: shortest job first on a point prediction — the cost of the predicted mean length.

What most length-aware schedulers do; it ignores the spread, so a request that is probably short but
possibly very long ranks as medium.
"""
from __future__ import annotations

from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.policies.base import Policy, register_policy
from sagesched.scheduling.types import SchedRequest


@register_policy
class SjfMean(Policy):
    name = "sjf-mean"

    def rank(self, req: SchedRequest, poly: CostPolynomial) -> float:
        return float(poly.at(min(self.distribution_for(req).mean, req.output_cap)))
