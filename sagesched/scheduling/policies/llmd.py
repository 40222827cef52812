"""`llmd`: the llm-d inference-scheduler default profile, without a central queue.

llm-d's default scheduling profile (the "intelligent inference scheduling" well-lit path) sums
weighted scorers and takes the max score: queue-scorer weight 2, kv-cache-utilization-scorer
weight 2, prefix-cache-scorer weight 3. Our traces carry no prompt text, so the prefix-cache score
is the same for every pod and drops out of the argmax; the remaining two keep their weights.
"""
from __future__ import annotations

from collections.abc import Sequence

from sagesched.scheduling.picker import kv_utilization_scorer, max_score_picker, queue_scorer, weighted
from sagesched.scheduling.policies.base import PickContext, Policy, register_policy
from sagesched.scheduling.types import PodView, SchedRequest

QUEUE_WEIGHT = 2.0
KV_CACHE_WEIGHT = 2.0


@register_policy
class LlmD(Policy):
    name = "llmd"
    central_queue = False
    _score = staticmethod(weighted([(QUEUE_WEIGHT, queue_scorer), (KV_CACHE_WEIGHT, kv_utilization_scorer)]))

    def choose(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> PodView:
        return max_score_picker(pods, self._score(req, pods), ctx.tick)
