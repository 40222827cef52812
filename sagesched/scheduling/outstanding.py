"""What an in-flight request still has to do: remaining tokens (mean and variance).

The admission gates sum these over a pod's in-flight requests on every dispatch,
so each request caches its numbers and recomputes them only when its attained length crosses the
next step of a geometric ladder (~41% apart): conditioning moves slowly on a log grid, and a few
percent of error in a remaining-work estimate does not change a decision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from sagesched.distribution import LengthDistribution
from sagesched.scheduling.cost import capped_moments
from sagesched.scheduling.gittins import conditioned

_LADDER = 2.0**0.5
_CACHE_LIMIT = 200_000


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


_moments: dict[tuple[int, int, int], tuple[LengthDistribution, float, float]] = {}


def _length_moments(dist: LengthDistribution, cap: int, s: int) -> tuple[float, float]:
    """E[L], E[L²] given L > s, capped. Keyed by the distribution's identity (predictors hand out
    one object per context until new evidence arrives), so many requests share one computation;
    the entry holds the object so its id cannot be reused while cached."""
    key = (id(dist), cap, s)
    hit = _moments.get(key)
    if hit is None:
        if len(_moments) > _CACHE_LIMIT:
            _moments.clear()
        p, m1, m2, _ = capped_moments(conditioned(dist, s), max(cap, s + 1))
        hit = _moments[key] = (dist, float(p @ m1), float(p @ m2))
    return hit[1], hit[2]


def remaining(dist: LengthDistribution, cap: int, generated: int) -> Remaining:
    """From the cached moments, shared by every request with the same distribution object."""
    s = snap(generated)
    m1, m2 = _length_moments(dist, cap, s)
    return Remaining(s, m1, max(m2 - m1 * m1, 0.0))
