"""What an in-flight request still has to do: remaining tokens (mean and variance).

The admission gates sum these over a pod's in-flight requests on every dispatch,
so each request caches its numbers and recomputes them only when its attained length crosses the
next step of a geometric ladder (~41% apart): conditioning moves slowly on a log grid, and a few
percent of error in a remaining-work estimate does not change a decision.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sagesched.distribution import LengthDistribution, LengthGrid
from sagesched.scheduling.cost import capped_moments, capped_shape
from sagesched.scheduling.gittins import conditioned

_LADDER = 2.0**0.5
_CACHE_LIMIT = 20_000  # tables: a few hundred bytes each


def snap(attained: int) -> int:
    """Largest ladder step ≤ attained (0 stays 0): the attained value the cache is keyed on."""
    if attained <= 0:
        return 0
    return int(_LADDER ** math.floor(math.log(attained, _LADDER) + 1e-9))


def _first_above(bound: int, lo: int, hi: int) -> int:
    """Smallest g in [lo, hi] with snap(g) > bound (snap is monotone, so bisect)."""
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if snap(mid) <= bound else (lo, mid)
    return lo


@lru_cache(maxsize=None)  # one entry per ladder step: a few dozen
def _span_of_step(step: int) -> tuple[int, int]:
    """[lo, hi): every attained count whose snap is `step`. A step is at most its first count
    and the ladder's ratio is below 2, so both ends lie within a factor 4 of it."""
    return _first_above(step - 1, 1, 2 * step + 2), _first_above(step, step + 1, 4 * step + 4)


def ladder_span(attained: int) -> tuple[int, int]:
    """[lo, hi): the attained counts that snap to the same step as `attained`, so a caller can
    tell a crossing with two comparisons instead of a logarithm."""
    if attained <= 0:
        return -(2**62), 1
    return _span_of_step(snap(attained))


@dataclass(frozen=True)
class Remaining:
    """Conditional totals given L > attained_snap: E[L], Var[L]."""

    attained_snap: int
    mean_len: float
    var_len: float

    def tokens(self, generated: int) -> float:
        return max(self.mean_len - generated, 0.0)


_STEPS = (0, *sorted({int(_LADDER**m) for m in range(62)}))  # every value `snap` returns
_ROW = {step: row for row, step in enumerate(_STEPS)}


class _LadderMoments:
    """E[L] and E[L²] given L > s, capped, for every ladder step s < cap of one distribution at once.

    A request crosses about one ladder step per 41% of growth (16 for a 1,000-token answer), and
    predictors hand out one distribution per request, so a per-step cache rarely hits. Conditioning
    on L > s keeps the bins above s's bin as they are and cuts that bin at s + 1, so each step's
    per-bin moments are the unconditioned ones with one bin replaced: the whole ladder costs a few
    operations over (steps × bins). Bit-identical to conditioning and `capped_moments` step by step
    (the same elementwise formulas, per-row sums, and per-row dot products as one batched matmul,
    BLAS both); only plain `LengthDistribution`s (point distributions bin differently)."""

    __slots__ = ("dist", "m1", "m2")

    def __init__(self, dist: LengthDistribution, cap: int) -> None:
        self.dist = dist  # held so its id cannot be reused while the table is cached
        same, kept, m1, m2 = _ladder_shape(dist.grid, dist.floor, cap)
        probs = dist.probs
        p = np.where(kept, np.where(same[:, None], probs, probs / probs.sum()), 0.0)
        total = p.sum(axis=1)
        p = p / np.where(total > 0, total, 1.0)[:, None]
        self.m1 = np.where(total > 0, np.matmul(p[:, None, :], m1[:, :, None])[:, 0, 0], np.nan).tolist()
        self.m2 = np.matmul(p[:, None, :], m2[:, :, None])[:, 0, 0].tolist()


@lru_cache(maxsize=512)  # ~20 KB each: one per (floor, max_tokens) in use
def _ladder_shape(g: LengthGrid, floor: int, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a ladder table takes from (grid, floor, cap) alone, shared by every distribution with
    them: per step s < cap, whether conditioning on L > s leaves the distribution as it is, which
    bins it keeps, and the per-bin capped moments (the unconditioned ones, the cut bin's replaced)."""
    steps = np.asarray(_STEPS[: bisect.bisect_left(_STEPS, cap)], dtype=np.int64)  # s + 1 <= cap
    same = (steps <= 0) | (steps + 1 <= floor)  # conditioning returns the distribution itself
    floors = np.where(same, floor, np.minimum(steps + 1, g.max_length))
    cut = g.bin_of(floors)  # the bin each floor cuts; those below it are gone
    kept = np.arange(g.num_bins) >= cut[:, None]
    m1, m2 = (np.repeat(m[None, :], len(steps), axis=0) for m in _unconditioned_shape(g, cap))
    at = np.arange(len(steps)), cut
    m1[at], m2[at], _ = capped_shape(floors, g.hi[cut], cap)
    for a in (same, kept, m1, m2):
        a.setflags(write=False)
    return same, kept, m1, m2


@lru_cache(maxsize=256)
def _unconditioned_shape(g: LengthGrid, cap: int) -> tuple[np.ndarray, np.ndarray]:
    m1, m2, _ = capped_shape(g.lo, g.hi, cap)
    return m1, m2


_tables: dict[tuple[int, int], _LadderMoments] = {}


def _length_moments(dist: LengthDistribution, cap: int, s: int) -> tuple[float, float]:
    """E[L], E[L²] given L > s, capped: from the distribution's ladder table when it has the step,
    else computed alone (point distributions, a floor beyond all mass, a step at or above the cap).
    The history estimator shares one distribution among the requests of a prompt bucket, so even a
    policy that asks only at dispatch (step 0) builds a table per distribution, not per request."""
    row = _ROW.get(s)
    if row is not None and type(dist) is LengthDistribution:
        key = (id(dist), cap)
        table = _tables.get(key)
        if table is None:
            if len(_tables) > _CACHE_LIMIT:
                _tables.clear()
            table = _tables[key] = _LadderMoments(dist, cap)
        if row < len(table.m1) and not math.isnan(m1 := table.m1[row]):
            return m1, table.m2[row]
    p, m1s, m2s, _ = capped_moments(conditioned(dist, s), max(cap, s + 1))
    return float(p @ m1s), float(p @ m2s)


def remaining(dist: LengthDistribution, cap: int, generated: int) -> Remaining:
    """From the cached moments, shared by every request with the same distribution object."""
    s = snap(generated)
    m1, m2 = _length_moments(dist, cap, s)
    return Remaining(s, m1, max(m2 - m1 * m1, 0.0))
