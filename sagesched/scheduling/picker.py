"""Pod selection as small units, llm-d style: filters narrow the pods, scorers rate them (higher is
better, each in [0, 1] or a cost turned into one), pickers choose.

Policies compose these; none of them reads the queue.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from sagesched.scheduling.types import PodView, SchedRequest

Filter = Callable[[SchedRequest, PodView], bool]
Scorer = Callable[[SchedRequest, Sequence[PodView]], list[float]]


def eligible_for(req: SchedRequest, pod: PodView) -> bool:
    """Healthy, fresh, and serving the request's model. Stale metrics count as saturated."""
    return pod.eligible and pod.serves(req.model)


def apply_filters(req: SchedRequest, pods: Sequence[PodView], filters: Sequence[Filter]) -> list[PodView]:
    return [p for p in pods if all(f(req, p) for f in filters)]


def queue_scorer(_: SchedRequest, pods: Sequence[PodView]) -> list[float]:
    """llm-d queue-scorer: min-max normalised waiting queue, emptier is better."""
    q = [p.num_waiting for p in pods]
    lo, hi = min(q), max(q)
    return [1.0 if hi == lo else (hi - x) / (hi - lo) for x in q]


def kv_utilization_scorer(_: SchedRequest, pods: Sequence[PodView]) -> list[float]:
    """llm-d kv-cache-utilization-scorer: free KV fraction."""
    return [1.0 - p.kv_usage for p in pods]


def least_requests_scorer(_: SchedRequest, pods: Sequence[PodView]) -> list[float]:
    return [-float(p.outstanding) for p in pods]


def weighted(scorers: Sequence[tuple[float, Scorer]]) -> Scorer:
    def score(req: SchedRequest, pods: Sequence[PodView]) -> list[float]:
        total = [0.0] * len(pods)
        for w, scorer in scorers:
            for i, s in enumerate(scorer(req, pods)):
                total[i] += w * s
        return total

    return score


def max_score_picker(pods: Sequence[PodView], scores: Sequence[float], tie_break: int) -> PodView:
    """Highest score; ties go round-robin by `tie_break` so equal pods share load evenly."""
    best = max(scores)
    tied = [p for p, s in zip(pods, scores) if s >= best - 1e-12]
    return tied[tie_break % len(tied)]
