"""`kv`: llm-d's kv-cache-utilization-scorer — the free KV share the engine reports."""
from __future__ import annotations

from collections.abc import Sequence

from sagesched.scheduling.picker import SCORERS, PickContext, Scorer
from sagesched.scheduling.types import PodView, SchedRequest


@SCORERS.register
class KvUtilization(Scorer):
    name = "kv"

    def score(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> list[float]:
        return [1.0 - p.kv_usage for p in pods]
