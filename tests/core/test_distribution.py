"""LengthDistribution: the maths every component relies on."""
from __future__ import annotations

import numpy as np
import pytest

from sagesched.distribution import LengthDistribution, LengthGrid, grid


def test_grid_edges_are_strictly_increasing_integers_covering_one_to_max() -> None:
    g = LengthGrid(64, 32768)
    assert g.edges[0] == 1 and g.edges[-1] == 32769
    assert (np.diff(g.edges) >= 1).all()
    # every length lands in exactly one bin whose bounds contain it
    lengths = np.arange(1, 32769)
    bins = g.bin_of(lengths)
    assert ((g.lo[bins] <= lengths) & (lengths <= g.hi[bins])).all()


def test_same_parameters_rebuild_identical_edges() -> None:
    assert np.array_equal(LengthGrid(48, 4096).edges, LengthGrid(48, 4096).edges)


def test_point_distribution_is_exact() -> None:
    d = LengthDistribution.point(137)
    assert d.mean == 137 and d.second_moment == 137**2
    assert d.cdf(136) == 0 and d.cdf(137) == 1
    assert d.quantile(0.01) == 137 and d.quantile(0.99) == 137


def test_moments_match_the_samples_they_came_from_in_exact_bins() -> None:
    g = grid()
    small = np.array([1, 2, 3, 4, 5, 6, 7, 8])  # bins 1..19 hold one integer each
    d = LengthDistribution.from_samples(small, grid_=g)
    assert d.mean == pytest.approx(small.mean())
    assert d.second_moment == pytest.approx((small.astype(float) ** 2).mean())


def test_quantile_inverts_cdf() -> None:
    rng = np.random.default_rng(1)
    d = LengthDistribution.from_samples(rng.lognormal(5, 1, 5000).astype(int) + 1)
    for q in (0.1, 0.5, 0.9, 0.99):
        x = d.quantile(q)
        assert d.cdf(x) >= q - 1e-9
        assert d.cdf(x - 1) < q + 1e-9


def test_conditioning_on_attained_tokens_removes_shorter_lengths() -> None:
    d = LengthDistribution.from_samples(np.array([10, 10, 10, 1000]))
    later = d.given_at_least(200)
    assert later.cdf(199) == 0
    # 1000 falls in the grid bin [919, 1080] (edges round(32769 ** (42/64)) = round(918.9) = 919 and
    # round(32769 ** (43/64)) = round(1081.0) = 1081); 200 lies below it, so the whole bin is kept:
    # uniform on 919..1080, mean (919 + 1080) / 2 = 999.5 (unconditioned: 0.75*10 + 0.25*999.5 = 257.375)
    assert d.mean == pytest.approx(257.375)
    assert later.mean == pytest.approx(999.5)
    # attained inside that bin keeps only its lengths >= 1000: uniform on 1000..1080, mean 1040
    assert d.given_at_least(1000).mean == pytest.approx(1040.0)
    assert d.given_at_least(1000).cdf(999) == 0
    # conditioning never lowers the mean, and attained below the floor changes nothing
    assert d.given_at_least(5).mean >= d.mean - 1e-9
    assert d.given_at_least(1) is d


def test_conditioning_past_all_mass_keeps_a_valid_distribution() -> None:
    d = LengthDistribution.from_samples(np.array([10, 12]))
    beyond = d.given_at_least(5000)
    assert beyond.cdf(4999) == 0
    assert beyond.mean >= 5000


def test_sampling_follows_the_distribution() -> None:
    d = LengthDistribution.from_samples(np.array([5] * 3 + [500]))
    draws = d.sample(np.random.default_rng(0), 20000)
    assert abs((draws < 100).mean() - 0.75) < 0.02
    assert draws.min() >= 1


def test_mixture_weights_the_parts() -> None:
    short, long = LengthDistribution.point(10), LengthDistribution.point(1000)
    mix = LengthDistribution.mixture([short, long], [0.25, 0.75])
    assert mix.cdf(100) == pytest.approx(0.25)


def test_invalid_probabilities_are_rejected() -> None:
    with pytest.raises(ValueError):
        LengthDistribution(np.zeros(grid().num_bins))
    with pytest.raises(ValueError):
        LengthDistribution(np.ones(3))


def test_flat_noise_is_uniform_over_lengths_not_over_bins() -> None:
    g = grid()
    flat = LengthDistribution.flat(g)
    assert flat.mean == pytest.approx((1 + g.max_length) / 2, rel=0.01)
    # log-spaced bins: 18 of the 64 bins lie below 19 tokens, a 28% share for `uniform` but
    # 18 / 32768 of the lengths for `flat`
    assert LengthDistribution.uniform(g).cdf(18) == pytest.approx(18 / 64)
    assert flat.cdf(18) == pytest.approx(18 / g.max_length)
