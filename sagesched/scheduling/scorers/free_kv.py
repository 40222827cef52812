"""`free-kv`: the free KV share as reported, less the prompts we sent that the engine has not taken in
yet (reports lag dispatches) — the Scheduler's own reading (PickContext.free_kv). KV is what runs out:
an engine out of blocks preempts and recomputes."""
from __future__ import annotations

from collections.abc import Sequence

from sagesched.scheduling.picker import SCORERS, PickContext, Scorer
from sagesched.scheduling.types import PodView, SchedRequest


@SCORERS.register
class FreeKv(Scorer):
    name = "free-kv"

    def score(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> list[float]:
        free_kv = ctx.free_kv
        return [free_kv(p) for p in pods]
