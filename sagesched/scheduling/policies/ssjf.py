"""`ssjf`: speculative shortest job first (Qiu et al. 2024) — non-preemptive SJF on a point
prediction of the output length, with output-only cost (its predictor is a fine-tuned BERT; here the
point is the mean of the request's predicted distribution, so every policy sees the same predictor)."""
from __future__ import annotations

from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.policies.base import Policy, register_policy
from sagesched.scheduling.types import SchedRequest


@register_policy
class Ssjf(Policy):
    name = "ssjf"
    cost_model = "output"

    def rank(self, req: SchedRequest, poly: CostPolynomial, attained: int) -> float:
        return float(poly.at(min(self.distribution_for(req).mean, req.output_cap)))
