"""The ladder table of remaining-length moments equals conditioning one step at a time, to the bit:
pinned simulator results depend on it, and every admission gate sums these numbers."""
from __future__ import annotations

import numpy as np
import pytest

from sagesched.distribution import LengthDistribution, grid
from sagesched.scheduling import outstanding
from sagesched.scheduling.cost import capped_moments
from sagesched.scheduling.gittins import conditioned


def _one_step(dist: LengthDistribution, cap: int, s: int) -> tuple[float, float]:
    p, m1, m2, _ = capped_moments(conditioned(dist, s), max(cap, s + 1))
    return float(p @ m1), float(p @ m2)


def _distributions(rng: np.random.Generator) -> list[LengthDistribution]:
    g = grid()
    out = [LengthDistribution.uniform(g), LengthDistribution.flat(g)]
    for _ in range(30):
        probs = rng.random(g.num_bins) * (rng.random(g.num_bins) < rng.uniform(0.05, 1.0))
        probs[rng.integers(g.num_bins)] += 0.1  # never all zero
        dist = LengthDistribution(probs, g)
        out.append(dist if rng.random() < 0.7 else dist.given_at_least(int(rng.integers(2, 3000))))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_the_table_equals_conditioning_step_by_step(seed: int):
    rng = np.random.default_rng(seed)
    outstanding._tables.clear()
    for dist in _distributions(rng):
        for cap in (1, 7, 100, 512, int(rng.integers(2, 32768)), 32768):
            for s in sorted({outstanding.snap(g) for g in range(0, cap + 3, max(cap // 40, 1))}):
                assert outstanding._length_moments(dist, cap, s) == _one_step(dist, cap, s), (dist.floor, cap, s)


def test_point_distributions_and_mass_below_the_floor_take_the_step_by_step_path():
    g = grid()
    point = LengthDistribution.point(300, g)
    assert outstanding._length_moments(point, 1000, 128) == _one_step(point, 1000, 128)
    short = LengthDistribution(np.eye(g.num_bins)[3], g)  # all mass in a low bin: conditioning beyond it
    s = outstanding.snap(2000)
    assert outstanding._length_moments(short, 4000, s) == _one_step(short, 4000, s)
