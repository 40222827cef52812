"""`prefix`: prefix-cache affinity (scheduling/affinity.py) — the share of the request's leading prompt
blocks a pod was recently sent. Requests without prompt blocks (token ids, traces of lengths only)
give it nothing to go by: every pod scores the same."""
from __future__ import annotations

from collections.abc import Sequence

from sagesched.scheduling.affinity import PrefixIndex
from sagesched.scheduling.picker import SCORERS, PickContext, Scorer
from sagesched.scheduling.types import PodView, SchedRequest


@SCORERS.register
class Prefix(Scorer):
    name = "prefix"
    reads_prefix_blocks = True

    def __init__(self) -> None:
        self.index = PrefixIndex()

    def score(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> list[float] | None:
        return self.cached_shares(req, pods)

    def dispatched(self, req: SchedRequest, pod: PodView) -> None:
        self.index.record(req, pod)

    def cached_shares(self, req: SchedRequest, pods: Sequence[PodView]) -> list[float] | None:
        return self.index.score(req, pods) if req.prefix_blocks else None
