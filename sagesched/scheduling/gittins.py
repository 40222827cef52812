"""Gittins index of a request whose service cost is a distribution.

With only the distribution of a job's size known, the mean-response-time-optimal single-server
policy serves the job with the highest index

    G(a) = max over thresholds l > a of  P(L ≤ l | L > a) / E[cost spent until min(L, l) | L > a]

(probability of finishing within the next quantum per unit of expected cost spent in it). The
thresholds are the grid's bin tops, so the maximum is one cumulative sum over bins. For a sure length
the only threshold that finishes is L itself, so 1/G = cost(L): SJF/SRPT. For a wide distribution the
index prefers requests likely to finish soon even when their mean is long.
"""
from __future__ import annotations

import numpy as np

from sagesched.distribution import LengthDistribution
from sagesched.scheduling.cost import CostPolynomial, capped_moments


def conditioned(dist: LengthDistribution, attained: int) -> LengthDistribution:
    """The length distribution of a request still running after `attained` tokens: L > attained."""
    return dist if attained <= 0 else dist.given_at_least(attained + 1)


def gittins_rank(
    dist: LengthDistribution, poly: CostPolynomial, cap: int, attained: int = 0, quantum: int | None = 1
) -> float:
    """1 / Gittins index: the expected cost per completion of the best quantum (lower = serve first).
    `quantum`: the fewest tokens the request runs before it can be stopped (None: never stopped)."""
    cap = max(int(cap), attained + 1)
    p, m1, m2, threshold = capped_moments(conditioned(dist, attained), cap)
    spent_before = poly.spent(attained)
    cost_if_done = poly.expected(m1, m2) - spent_before  # per bin: finishing inside it
    done = np.cumsum(p)
    cost = np.cumsum(p * cost_if_done) + (1.0 - done) * (poly.at(threshold) - spent_before)
    useful = (p > 0) & (cost > 0)
    if not useful.any():
        return 0.0
    last = np.flatnonzero(useful)[-1]  # completion: always a threshold
    if quantum is None:
        useful[:last] = False
    else:
        useful &= threshold >= attained + quantum
        useful[last] = True
    return float(np.min(cost[useful] / done[useful]))
