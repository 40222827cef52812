"""`queue`: llm-d's queue-scorer — the engine's waiting queue, min-max normalised, emptier is better."""
from __future__ import annotations

from collections.abc import Sequence

from sagesched.scheduling.picker import SCORERS, PickContext, Scorer
from sagesched.scheduling.types import PodView, SchedRequest


@SCORERS.register
class Queue(Scorer):
    name = "queue"

    def score(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> list[float]:
        q = [p.waiting_at_engine for p in pods]
        lo, hi = min(q), max(q)
        return [1.0 if hi == lo else (hi - x) / (hi - lo) for x in q]
