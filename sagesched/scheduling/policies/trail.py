"""`trail`: TRAIL (Shahout et al., ICLR 2025) — SRPT on a length prediction refined as tokens are
generated, with limited preemption.

TRAIL re-predicts the remaining length from the model's embeddings every iteration; here the
refinement is the shared predictor conditioned on the tokens generated, E[L − a | L > a], refreshed
at the same bucket boundaries as every preemptive policy. Limited preemption: a running request may
be displaced only early in its life, while it has generated less than `early_fraction` of the length
predicted at arrival (TRAIL's bound on the memory that preemption wastes). Output-only cost.
"""
from __future__ import annotations

from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.policies.base import Policy, register_policy
from sagesched.scheduling.types import SchedRequest
from sagesched.scheduling.gittins import conditioned


@register_policy
class Trail(Policy):
    name = "trail"
    preemptive = True
    cost_model = "output"

    def __init__(self, early_fraction: float = 0.5) -> None:
        self.early_fraction = early_fraction

    def rank(self, req: SchedRequest, poly: CostPolynomial, attained: int) -> float:
        expected = min(conditioned(self.distribution_for(req), attained).mean, req.output_cap)
        return float(poly.at(max(expected, attained + 1))) - poly.spent(attained)

    def may_preempt(self, req: SchedRequest) -> bool:
        return req.generated < self.early_fraction * self.distribution_for(req).mean
