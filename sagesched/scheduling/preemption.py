"""When a waiting request may displace a running one: the hysteresis that keeps preemption useful.

The scheduler asks only when the head of a queue fits on no pod. The candidate is the running
request with the worst (client priority, aged rank as of its last refresh bucket) among those that
have streamed something, have not hit the per-request cap, were not decided on in their current
bucket, and that the policy lets go. Its rank is then brought up to date, and it is displaced only if
it exceeds the head's by more than `min_gain` of the head's rank plus its own recompute cost: close
indices would trade places back and forth, and every swap costs a recompute. Either way that is the one decision of its bucket.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sagesched.scheduling.types import SchedRequest

DEFAULT_BUCKET_TOKENS = 100  # best of the sweep in bench/results/standard (the paper found 200)


@dataclass(frozen=True)
class Preemption:
    enabled: bool = True
    bucket_tokens: int = DEFAULT_BUCKET_TOKENS
    min_gain: float = 0.5  # the victim's aged rank must exceed the head's by this share of its rank
    max_per_request: int = 2  # then it runs to completion: bounds recompute and starvation
    # a recompute stalls every request batched on the pod: its cost counts once per running request
    recompute_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.bucket_tokens < 1 or self.min_gain < 0 or self.max_per_request < 0:
            raise ValueError("preemption: bucket_tokens >= 1, min_gain >= 0, max_per_request >= 0")


NO_PREEMPTION = Preemption(enabled=False)
UNBOUNDED = Preemption(min_gain=0.0, max_per_request=1 << 30)  # the oracle's SRPT


def pick_candidate(
    running: Iterable[SchedRequest],
    key: Callable[[SchedRequest], float],
    eligible: Callable[[SchedRequest], bool],
    settings: Preemption,
) -> SchedRequest | None:
    """The running request a preemption would displace, or None. `key` is the static aged key
    (rank + aging·arrival: the same order as the aged rank at any instant)."""
    worst, worst_key = None, None
    for req in running:
        if req.generated <= 0 or req.preemptions >= settings.max_per_request or not eligible(req):
            continue
        k = (req.priority, key(req))
        if worst_key is None or k > worst_key:
            worst, worst_key = req, k
    return worst


def worth_preempting(
    head: SchedRequest, head_key: float, victim: SchedRequest, victim_key: float, recompute: float,
    settings: Preemption,
) -> bool:
    """Client priority first; within it, the victim's aged rank must beat the head's by the margin
    plus what resuming the victim will cost (`recompute`, pod-seconds: its prompt and output
    computed again if its cache is gone) — the paper's decisions count that I/O too."""
    if victim.priority != head.priority:
        return victim.priority > head.priority
    return victim_key > head_key + settings.min_gain * max(head.rank, 0.0) + recompute
