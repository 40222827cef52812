"""Pod choice as plugins, llm-d style: filters narrow the pods, weighted scorers rate them (higher is
better), a picker chooses. `Pick` is one composition of them: a policy's default (`default_pick`) or
the configuration's `pick` block. Scorers live in scorers/, one file each.

None of them reads the queue.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from sagesched.scheduling.plugins import Plugin, PluginClock, Registry
from sagesched.scheduling.types import PodView, SchedRequest


def eligible_for(req: SchedRequest, pod: PodView) -> bool:
    """Healthy, fresh, and serving the request's model. Stale metrics count as saturated."""
    return pod.eligible and pod.serves(req.model)


class Filter(Plugin):
    """Narrows the pods a request may go to (a whole pass over them)."""

    def keep(self, req: SchedRequest, pods: Sequence[PodView]) -> list[PodView]:
        raise NotImplementedError


class Scorer(Plugin):
    """Rates pods for a request, higher better, one float per pod; None when the request gives it
    nothing to tell pods apart by (every pod 0: skipped)."""

    reads_prefix_blocks = False  # it needs `SchedRequest.prefix_blocks` (hashed from the prompt by the router)

    def score(self, req: SchedRequest, pods: Sequence[PodView], ctx: "PickContext") -> list[float] | None:
        raise NotImplementedError

    def dispatched(self, req: SchedRequest, pod: PodView) -> None:
        """`req` was sent to `pod`: scorers that remember what went where (prefix affinity) learn it."""

    def cached_shares(self, req: SchedRequest, pods: Sequence[PodView]) -> list[float] | None:
        """Per pod, the share of the request's prompt it holds in its prefix cache, for a scorer that
        knows (prefix affinity); None for the others."""
        return None


class Picker(Plugin):
    """Chooses one of the pods from their summed scores."""

    def pick(self, pods: Sequence[PodView], scores: Sequence[float], ctx: "PickContext") -> PodView:
        raise NotImplementedError


FILTERS: Registry[Filter] = Registry("filter")
SCORERS: Registry[Scorer] = Registry("scorer")
PICKERS: Registry[Picker] = Registry("picker")


@FILTERS.register
class Eligible(Filter):
    """Always first (the Scheduler applies it before the gates); configured filters come after."""

    name = "eligible"

    def keep(self, req: SchedRequest, pods: Sequence[PodView]) -> list[PodView]:
        return [p for p in pods if eligible_for(req, p)]


@PICKERS.register
class MaxScore(Picker):
    """Highest score; ties go round-robin so equal pods share load evenly."""

    name = "max-score"

    def pick(self, pods: Sequence[PodView], scores: Sequence[float], ctx: "PickContext") -> PodView:
        best = max(scores)
        tied = [p for p, s in zip(pods, scores) if s >= best - 1e-12]
        return tied[ctx.tick % len(tied)]


@PICKERS.register
class RoundRobin(Picker):
    """The next pod in turn, whatever the scores (what a Kubernetes Service does)."""

    name = "round-robin"

    def pick(self, pods: Sequence[PodView], scores: Sequence[float], ctx: "PickContext") -> PodView:
        return pods[ctx.tick % len(pods)]


@dataclass
class PickContext:
    """What the Scheduler lends one pick: the composition, the share of a pod's KV still free once
    the prompts we sent it are in, a counter for round-robin tie-breaking, and the plugins' clock."""

    pick: "Pick"
    free_kv: Callable[[PodView], float]
    tick: int
    clock: PluginClock


PluginSpec = tuple[str, Mapping[str, Any]]  # a name and its parameters


class Pick:
    """Filters, then the weighted sum of scores (in the listed order), then the picker."""

    def __init__(self, scorers: Sequence[tuple[PluginSpec, float]], picker: PluginSpec = ("max-score", {}),
                 filters: Sequence[PluginSpec] = ()) -> None:
        self.filters = [FILTERS.make(name, params) for name, params in filters]
        # a zero weight cannot change a sum: such a scorer is not run (nor told of dispatches)
        self.scorers = [(w, SCORERS.make(name, params)) for (name, params), w in scorers if w]
        self.picker = PICKERS.make(*picker)

    @classmethod
    def weighted(cls, *scorers: tuple[str, float], picker: str = "max-score") -> "Pick":
        """A policy's default: scorers by name with their default parameters."""
        return cls([((name, {}), w) for name, w in scorers], (picker, {}))

    @property
    def reads_prefix_blocks(self) -> bool:
        """Whether a request's prompt blocks matter to this pick: the router hashes prompts only then."""
        return any(scorer.reads_prefix_blocks for _, scorer in self.scorers)

    def choose(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> PodView | None:
        clock = ctx.clock
        for f in self.filters:
            t0 = perf_counter()
            pods = f.keep(req, pods)
            clock.add("filter", f.name, perf_counter() - t0)
        if not pods:
            return None
        total = self._score(req, pods, ctx)
        t0 = perf_counter()
        chosen = self.picker.pick(pods, total, ctx)
        clock.add("picker", self.picker.name, perf_counter() - t0)
        return chosen

    def _score(self, req: SchedRequest, pods: Sequence[PodView], ctx: PickContext) -> list[float]:
        """Sum of weight x score, added in the listed order (so results do not depend on how it is run)."""
        total: list[float] | None = None
        for w, scorer in self.scorers:
            t0 = perf_counter()
            scores = scorer.score(req, pods, ctx)
            if scores is not None:
                scores = scores if w == 1.0 else [w * s for s in scores]
                total = scores if total is None else [t + s for t, s in zip(total, scores)]
            ctx.clock.add("scorer", scorer.name, perf_counter() - t0)
        return [0.0] * len(pods) if total is None else total

    def dispatched(self, req: SchedRequest, pod: PodView) -> None:
        for _, scorer in self.scorers:
            scorer.dispatched(req, pod)

    def cached_shares(self, req: SchedRequest, pods: Sequence[PodView]) -> dict[str, float]:
        """Per pod name, the share of the request's prompt it caches, as the first scorer that knows
        says (none without such a scorer)."""
        for _, scorer in self.scorers:
            shares = scorer.cached_shares(req, pods)
            if shares is not None:
                return {p.name: s for p, s in zip(pods, shares) if s > 0.0}
        return {}
