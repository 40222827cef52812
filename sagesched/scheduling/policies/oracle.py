"""`oracle`: knows every output length — SRPT order on the true cost, same memory model and
picker. The limit any predictor can approach; simulator only."""
from __future__ import annotations

from sagesched.distribution import LengthDistribution
from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.policies.base import Policy, register_policy
from sagesched.scheduling.types import SchedRequest


@register_policy
class Oracle(Policy):
    name = "oracle"

    def distribution_for(self, req: SchedRequest) -> LengthDistribution:
        if req.true_output_tokens is None:
            raise ValueError(f"oracle needs true_output_tokens (request {req.request_id})")
        return LengthDistribution.point(min(req.true_output_tokens, req.output_cap), req.distribution.grid)

    def rank(self, req: SchedRequest, poly: CostPolynomial) -> float:
        return float(poly.at(min(req.true_output_tokens or 1, req.output_cap)))
