"""`fastserve`: FastServe (Wu et al. 2023) — a skip-join multi-level feedback queue, preemptive,
using no length prediction.

Level i lets a request run `base_quantum · 2^i` tokens before it is demoted to level i+1. A new
request skips the levels whose quantum is shorter than its prefill, counted in decode iterations
(a prefill iteration processes about `prefill_tokens_per_step` prompt tokens in the time a decode
iteration takes), so a long prompt does not pass through queues it would overrun at once. The rank is
the level (as 2^level pod-seconds·unit, so aging keeps its meaning); within a level, arrival order.
Levels are the refresh buckets: a request is re-ranked, and may be preempted, when it is demoted.
"""
from __future__ import annotations

import math

from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.policies.base import Policy, register_policy
from sagesched.scheduling.types import SchedRequest

LEVEL_UNIT_S = 0.01  # pod-seconds of rank per level step; only the order of levels matters


@register_policy
class FastServe(Policy):
    name = "fastserve"
    preemptive = True

    def __init__(self, base_quantum: int = 16, levels: int = 12, prefill_tokens_per_step: int = 256) -> None:
        self.base_quantum = base_quantum
        self.levels = levels
        self.prefill_tokens_per_step = prefill_tokens_per_step

    def entry_level(self, req: SchedRequest) -> int:
        """Skip-join: the first level whose quantum covers the prefill's iterations."""
        iterations = req.prompt_tokens / self.prefill_tokens_per_step
        return min(max(0, math.ceil(math.log2(max(iterations / self.base_quantum, 1.0)))), self.levels - 1)

    def level(self, entry: int, attained: int) -> int:
        """Level after `attained` tokens: quanta q·2^entry, q·2^(entry+1), … used up in turn."""
        used = attained / (self.base_quantum * 2**entry)  # in units of the entry quantum
        return min(entry + max(0, math.floor(math.log2(used + 1.0))), self.levels - 1)

    def rank(self, req: SchedRequest, poly: CostPolynomial, attained: int) -> float:
        return LEVEL_UNIT_S * 2.0 ** self.level(self.entry_level(req), attained)

    def bucket(self, req: SchedRequest, generated: int, size: int) -> int:
        return self.level(self.entry_level(req), generated)

    def bucket_end(self, req: SchedRequest, generated: int, size: int) -> int:
        """Levels come from floating-point logarithms: every count is checked."""
        return generated + 1
