"""`least-requests`: fewest outstanding requests (vLLM production-stack / Envoy LEAST_REQUEST)."""
from __future__ import annotations

from collections.abc import Sequence

from sagesched.scheduling.picker import SCORERS, PickContext, Scorer
from sagesched.scheduling.types import PodView, SchedRequest


@SCORERS.register
class LeastRequests(Scorer):
    name = "least-requests"

    def score(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> list[float]:
        return [-float(p.outstanding) for p in pods]
