"""The policy interface and its registry.

A policy answers: in what order do waiting requests leave the central queue (`rank`, lower first),
which of the pods that can take a request gets it (`choose`), and — for preemptive policies — when a
running request's rank is looked at again (`bucket`) and whether it may be displaced at all
(`may_preempt`). Anchor routers have no central queue (`central_queue = False`): they dispatch on
arrival and the engine's own queue does the ordering.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from sagesched.distribution import LengthDistribution
from sagesched.scheduling.cost import CostPolynomial
from sagesched.scheduling.picker import max_score_picker
from sagesched.scheduling.types import PodView, SchedRequest


@dataclass
class PickContext:
    """What the Scheduler lends a policy for one pick: the share of a pod's KV still free once the
    prompts we sent it are in, and a counter for round-robin tie-breaking."""

    free_kv: Callable[[PodView], float]
    tick: int


class Policy:
    name: ClassVar[str] = ""
    central_queue: ClassVar[bool] = True
    # re-ranks running requests as they generate and lets a better waiting one displace them
    preemptive: ClassVar[bool] = False
    aged: ClassVar[bool] = True  # the queue's aging applies (the oracle is a bound: no aging)
    cost_model: ClassVar[str | None] = None  # None: the scheduler's; e.g. "output" for SSJF-family
    # fewest tokens a running request runs before the scheduler may stop it; None: never stopped.
    # Set by the Scheduler: 1 with preemption (a bucket-sized quantum measured 10% worse on the
    # memory-bound case of bench/results/standard), None without.
    quantum: int | None = None

    def distribution_for(self, req: SchedRequest) -> LengthDistribution:
        """The length distribution this policy believes (the oracle swaps in the truth)."""
        return req.distribution

    def rank(self, req: SchedRequest, poly: CostPolynomial, attained: int) -> float:
        """Rank in pod-seconds (lower leaves first) of a request that has generated `attained`
        tokens; aging is added by the queue."""
        return 0.0

    def bucket(self, req: SchedRequest, generated: int, size: int) -> int:
        """Which refresh bucket `generated` tokens fall in: the rank of a running request is
        recomputed only when this changes (and at most one preemption decision per bucket)."""
        return generated // size

    def bucket_end(self, req: SchedRequest, generated: int, size: int) -> int:
        """The fewest tokens past `generated` whose bucket may differ from its bucket: the scheduler
        skips bucket checks below it. Must agree with `bucket`."""
        return (generated // size + 1) * size

    def may_preempt(self, req: SchedRequest) -> bool:
        """Whether this running request may be displaced now (besides the scheduler's cap)."""
        return True

    def choose(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> PodView:
        """Default picker: a resumed request goes back to the pod whose prefix cache holds it if it
        fits there; otherwise the pod with the most free KV. The count gate already evens out the
        requests per pod, and KV is what runs out: an engine out of blocks preempts and recomputes.
        Against the earlier least-expected-work picker (`sagesched bench standard` cases): paper-8pods
        at 1.2 load 23.7 s vs 25.0 s mean TTLT, engine preemptions 8 vs 421; no case worse by > 0.4%."""
        home = next((p for p in pods if p.name == req.resume_pod), None)
        if home is not None and ctx.free_kv(home) * home.profile.kv_capacity_tokens >= req.prompt_tokens + req.generated:
            return home
        return max_score_picker(pods, self.pod_scores(req, pods, ctx), ctx.tick)

    def pod_scores(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> list[float]:
        """The default picker's scores (higher is better): each pod's free KV share."""
        return [ctx.free_kv(p) for p in pods]

    def dispatched(self, req: SchedRequest, pod: PodView) -> None:
        """`req` was sent to `pod` (by `choose`, or to a pod a preemption freed): scorers that
        remember what went where (prefix-cache affinity) learn it here."""


POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    POLICIES[cls.name] = cls
    return cls


def make_policy(name: str, **params: float) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    try:
        return POLICIES[name](**params)
    except TypeError as exc:
        raise ValueError(f"policy {name!r} does not take parameters {sorted(params)}") from exc
