"""`llmd`: the llm-d inference-scheduler default profile, without a central queue.

llm-d's default scheduling profile (the "intelligent inference scheduling" well-lit path) sums
weighted scorers and takes the max score: queue-scorer weight 2, kv-cache-utilization-scorer
weight 2, prefix-cache-scorer weight 3. The prefix-cache scorer is the approximate one (the router
remembers the prompt blocks it sent each pod: scorers/prefix.py); requests whose prompt the
router has no text of (token ids, traces of lengths only) score 0 on every pod, so the other two
decide alone. `prefix_weight=0` turns affinity off.
"""
from __future__ import annotations

from sagesched.scheduling.picker import Pick
from sagesched.scheduling.policies.base import Policy, register_policy

QUEUE_WEIGHT = 2.0
KV_CACHE_WEIGHT = 2.0
PREFIX_WEIGHT = 3.0


@register_policy
class LlmD(Policy):
    name = "llmd"
    central_queue = False

    def __init__(self, prefix_weight: float = PREFIX_WEIGHT) -> None:
        self.prefix_weight = prefix_weight

    def default_pick(self) -> Pick:
        return Pick.weighted(("queue", QUEUE_WEIGHT), ("kv", KV_CACHE_WEIGHT), ("prefix", self.prefix_weight))
