"""`sagesched`: the paper's Gittins index over the remaining-cost distribution, refreshed at bucket
boundaries as tokens are generated, with preemption (see scheduling/gittins.py).

A request that outlives the short part of its distribution sees its index grow at the next bucket and
yields to waiting requests that are now likelier to finish soon; with a sure length the index is the
remaining cost, i.e. SRPT.
"""
from __future__ import annotations

from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.gittins import gittins_rank
from sagesched.scheduling.policies.base import Policy, register_policy
from sagesched.scheduling.types import SchedRequest


@register_policy
class SageSched(Policy):
    name = "sagesched"
    preemptive = True

    def rank(self, req: SchedRequest, poly: CostPolynomial, attained: int) -> float:
        return gittins_rank(self.distribution_for(req), poly, req.output_cap, attained, self.quantum)
