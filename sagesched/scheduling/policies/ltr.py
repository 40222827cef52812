"""`ltr`: learning to rank (Fu et al., NeurIPS 2024) — non-preemptive, ordered by a predicted score
that only has to rank lengths, not estimate them; the queue's aging stands in for its starvation
guard. Its ranker (OPT-125M) is replaced by the shared predictor's median, a scale-free score: the
order a well-trained ranker would aim for, without the mean's sensitivity to the tail."""
from __future__ import annotations

from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.policies.base import Policy, register_policy
from sagesched.scheduling.types import SchedRequest


@register_policy
class Ltr(Policy):
    name = "ltr"
    cost_model = "output"

    def rank(self, req: SchedRequest, poly: CostPolynomial, attained: int) -> float:
        return float(poly.at(min(self.distribution_for(req).quantile(0.5), req.output_cap)))
