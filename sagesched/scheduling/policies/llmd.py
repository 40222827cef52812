"""`llmd`: the llm-d inference-scheduler default profile, without a central queue.

llm-d's default scheduling profile (the "intelligent inference scheduling" well-lit path) sums
weighted scorers and takes the max score: queue-scorer weight 2, kv-cache-utilization-scorer
weight 2, prefix-cache-scorer weight 3. The prefix-cache scorer is the approximate one (the router
remembers the prompt blocks it sent each pod: scheduling/affinity.py); requests whose prompt the
router has no text of (token ids, traces of lengths only) score 0 on every pod, so the other two
decide alone. `prefix_weight=0` turns affinity off.
"""
from __future__ import annotations

from collections.abc import Sequence

from sagesched.scheduling.affinity import PrefixIndex
from sagesched.scheduling.picker import kv_utilization_scorer, max_score_picker, queue_scorer, weighted
from sagesched.scheduling.policies.base import PickContext, Policy, register_policy
from sagesched.scheduling.types import PodView, SchedRequest

QUEUE_WEIGHT = 2.0
KV_CACHE_WEIGHT = 2.0
PREFIX_WEIGHT = 3.0


@register_policy
class LlmD(Policy):
    name = "llmd"
    central_queue = False

    def __init__(self, prefix_weight: float = PREFIX_WEIGHT) -> None:
        self._prefixes = PrefixIndex()
        self._score = weighted([(QUEUE_WEIGHT, queue_scorer), (KV_CACHE_WEIGHT, kv_utilization_scorer),
                                (prefix_weight, self._prefixes.score)])

    def choose(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> PodView:
        return max_score_picker(pods, self._score(req, pods), ctx.tick)

    def dispatched(self, req: SchedRequest, pod: PodView) -> None:
        self._prefixes.record(req, pod)
