"""`oracle`: knows every output length — preemptive SRPT on the true remaining cost, memory-aware
(its admission sees exact remaining KV growth), with no aging and no preemption cap. The bound any
predictor-driven policy is measured against; simulator only. `tests/simulator` checks it is at least
as good as every other policy on small traces."""
from __future__ import annotations

from sagesched.distribution import LengthDistribution
from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.policies.base import Policy, register_policy
from sagesched.scheduling.types import SchedRequest


@register_policy
class Oracle(Policy):
    name = "oracle"
    preemptive = True
    aged = False

    def distribution_for(self, req: SchedRequest) -> LengthDistribution:
        if req.true_output_tokens is None:
            raise ValueError(f"oracle needs true_output_tokens (request {req.request_id})")
        return LengthDistribution.point(min(req.true_output_tokens, req.output_cap), req.distribution.grid)

    def rank(self, req: SchedRequest, poly: CostPolynomial, attained: int) -> float:
        total = min(req.true_output_tokens or 1, req.output_cap)
        return float(poly.at(total)) - poly.spent(attained)
