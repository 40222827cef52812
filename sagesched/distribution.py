"""Output-length distributions over a shared log-spaced grid of token counts.

Every component speaks this one type: the predictor produces it, the cost model turns it into a cost
distribution, the policy ranks requests by it, and the router conditions it on the tokens a request
has already streamed. Bins are log-spaced because output lengths are heavy-tailed: a 20-token and a
40-token answer differ as much for scheduling as a 2,000- and a 4,000-token one.

Within a bin, lengths are taken as uniform over the bin's integers; every moment, quantile and
conditioning below is exact under that assumption.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np

DEFAULT_NUM_BINS = 64
DEFAULT_MAX_LENGTH = 32768


@dataclass(frozen=True)
class LengthGrid:
    """Integer bin edges from 1 to `max_length` tokens, geometric except where that would give
    bins narrower than one token. Two sides that agree on (num_bins, max_length) agree on edges."""

    num_bins: int = DEFAULT_NUM_BINS
    max_length: int = DEFAULT_MAX_LENGTH
    edges: np.ndarray = field(init=False, repr=False, compare=False)
    _edge_list: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_bins < 1 or self.max_length < self.num_bins:
            raise ValueError(f"invalid grid: num_bins={self.num_bins}, max_length={self.max_length}")
        raw = np.geomspace(1.0, self.max_length + 1.0, self.num_bins + 1)
        edges = np.empty(self.num_bins + 1, dtype=np.int64)
        edges[0] = 1
        for i in range(1, self.num_bins + 1):
            edges[i] = max(edges[i - 1] + 1, int(round(raw[i])))
        edges[-1] = max(edges[-1], self.max_length + 1)
        edges.setflags(write=False)
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "_edge_list", tuple(edges.tolist()))

    @property
    def lo(self) -> np.ndarray:
        """Smallest length in each bin."""
        return self.edges[:-1]

    @property
    def hi(self) -> np.ndarray:
        """Largest length in each bin."""
        return self.edges[1:] - 1

    def bin_of(self, lengths: np.ndarray | int) -> np.ndarray:
        """Bin index of each length; lengths outside [1, max_length] go to the end bins."""
        clipped = np.clip(np.asarray(lengths), 1, self.max_length)
        return np.searchsorted(self.edges, clipped, side="right") - 1

    def bin_of_one(self, length: int) -> int:
        """`bin_of` for one length, without numpy's per-call cost (learners ask once per completion)."""
        return bisect.bisect_right(self._edge_list, min(max(length, 1), self.max_length)) - 1


@lru_cache(maxsize=8)
def grid(num_bins: int = DEFAULT_NUM_BINS, max_length: int = DEFAULT_MAX_LENGTH) -> LengthGrid:
    """The shared grid instance for these parameters (grids are immutable, so share them)."""
    return LengthGrid(num_bins, max_length)


def _sum_of_squares(n: np.ndarray) -> np.ndarray:
    """1² + 2² + ... + n² (0 for n <= 0), as floats."""
    n = np.maximum(n.astype(np.float64), 0.0)
    return n * (n + 1.0) * (2.0 * n + 1.0) / 6.0


@lru_cache(maxsize=4096)
def _floored_bins(g: LengthGrid, floor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lowest length, highest length, whether any length is left) per bin of `g` once lengths
    below `floor` are cut: shared by every distribution with that floor, so computed once."""
    lo = np.maximum(g.lo, floor)
    hi = g.hi
    kept = hi >= lo
    hi = np.maximum(hi, lo)
    for a in (lo, hi, kept):
        a.setflags(write=False)
    return lo, hi, kept


@dataclass(frozen=True)
class LengthDistribution:
    """P(output length) over `grid`, optionally known to be at least `floor` tokens.

    `floor` is how conditioning on attained service stays exact: the bin holding `floor` keeps
    only its lengths >= floor, still uniform.
    """

    probs: np.ndarray
    grid: LengthGrid = field(default_factory=grid)
    floor: int = 1

    def __post_init__(self) -> None:
        probs = np.asarray(self.probs, dtype=np.float64)
        if probs.shape != (self.grid.num_bins,):
            raise ValueError(f"expected {self.grid.num_bins} probabilities, got shape {probs.shape}")
        total = probs.sum()
        if not np.isfinite(total) or total <= 0 or (probs < 0).any():
            raise ValueError("probabilities must be finite, non-negative and not all zero")
        probs = probs / total
        probs.setflags(write=False)
        object.__setattr__(self, "probs", probs)

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def point(cls, length: int, grid_: LengthGrid | None = None) -> "LengthDistribution":
        """A length known for sure (oracle), represented as its bin with floor = length and
        everything above cut off by `at_most` semantics of the bin: exact mean via `floor`."""
        g = grid_ or grid()
        length = int(np.clip(length, 1, g.max_length))
        probs = np.zeros(g.num_bins)
        probs[g.bin_of(length)] = 1.0
        return _PointDistribution(probs, g, floor=length)

    @classmethod
    def from_samples(
        cls,
        lengths: np.ndarray,
        weights: np.ndarray | None = None,
        grid_: LengthGrid | None = None,
        smoothing: float = 0.0,
    ) -> "LengthDistribution":
        """Empirical distribution of observed lengths; `smoothing` adds that much probability
        mass spread evenly over the bins (a Dirichlet prior) so no length is impossible."""
        g = grid_ or grid()
        counts = np.bincount(g.bin_of(np.asarray(lengths)), weights=weights, minlength=g.num_bins)
        counts = counts.astype(np.float64)
        total = counts.sum()
        if total <= 0:
            return cls.uniform(g)
        probs = counts / total
        if smoothing > 0:
            probs = (1.0 - smoothing) * probs + smoothing / g.num_bins
        return cls(probs, g)

    @classmethod
    def uniform(cls, grid_: LengthGrid | None = None) -> "LengthDistribution":
        """Equal mass per log-spaced bin: the know-nothing prior."""
        g = grid_ or grid()
        return cls(np.full(g.num_bins, 1.0 / g.num_bins), g)

    @classmethod
    def flat(cls, grid_: LengthGrid | None = None) -> "LengthDistribution":
        """Every length from 1 to the grid's maximum equally likely (mass per bin ∝ its width): the
        paper's prediction noise. Unlike `uniform`, it puts almost no mass on tiny lengths, which
        would otherwise make every request look likely to finish at once."""
        g = grid_ or grid()
        widths = np.diff(g.edges).astype(np.float64)
        return cls(widths / widths.sum(), g)

    @classmethod
    def mixture(
        cls, parts: list["LengthDistribution"], weights: list[float] | np.ndarray
    ) -> "LengthDistribution":
        """Weighted mixture of distributions on the same grid (floors are not mixed)."""
        w = np.asarray(weights, dtype=np.float64)
        stacked = np.stack([p.probs for p in parts])
        return cls(w @ stacked, parts[0].grid)

    # --- per-bin views that respect the floor ---------------------------------------------------
    def _bins(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities, lowest length, highest length) per bin after applying the floor."""
        lo, hi, kept = _floored_bins(self.grid, self.floor)
        p = np.where(kept, self.probs, 0.0)
        total = p.sum()
        if total <= 0:  # floor beyond all mass: the request is already longer than predicted
            p = (np.arange(self.grid.num_bins) == self.grid.bin_of(self.floor)).astype(np.float64)
            total = 1.0
        return p / total, lo, hi

    def support(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p, lowest, highest length) per bin after the floor: the exact shape the moments use,
        for callers that need per-bin thresholds (Gittins index, truncation at max_tokens)."""
        return self._bins()

    def bin_moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p, E[L | bin], E[L² | bin]) per bin: what cost models need, in one pass."""
        p, lo, hi = self._bins()
        n = (hi - lo + 1).astype(np.float64)
        mean = (lo + hi) / 2.0
        sq = (_sum_of_squares(hi) - _sum_of_squares(lo - 1)) / n
        return p, mean, sq

    # --- summaries ------------------------------------------------------------------------------
    @cached_property  # immutable (the probabilities are read-only), and asked per request and per rank
    def mean(self) -> float:
        p, m, _ = self.bin_moments()
        return float(p @ m)

    @cached_property
    def second_moment(self) -> float:
        p, _, sq = self.bin_moments()
        return float(p @ sq)

    @property
    def std(self) -> float:
        return float(np.sqrt(max(self.second_moment - self.mean**2, 0.0)))

    def cdf(self, length: float) -> float:
        """P(L <= length)."""
        p, lo, hi = self._bins()
        n = hi - lo + 1
        inside = np.clip((np.floor(length) - lo + 1) / n, 0.0, 1.0)
        return float(p @ inside)

    def survival(self, length: float) -> float:
        """P(L > length)."""
        return 1.0 - self.cdf(length)

    def quantile(self, q: float) -> float:
        """Smallest integer length whose CDF reaches q (q in [0, 1])."""
        p, lo, hi = self._bins()
        cum = np.cumsum(p)
        b = int(min(np.searchsorted(cum, q - 1e-12, side="left"), len(p) - 1))
        before = cum[b] - p[b]
        frac = 0.0 if p[b] <= 0 else (q - before) / p[b]
        n = hi[b] - lo[b] + 1
        return float(lo[b] + min(max(np.ceil(frac * n) - 1, 0), n - 1))

    def given_at_least(self, attained: int) -> "LengthDistribution":
        """P(L | L >= attained): the distribution once `attained` tokens have been generated
        without the request finishing (so at least attained + 1 tokens in total if it goes on;
        callers pass the count they know it will reach)."""
        if attained <= self.floor:
            return self
        return self._with_floor(int(min(attained, self.grid.max_length)))

    def _with_floor(self, floor: int) -> "LengthDistribution":
        """The constructor's result for (probs, grid, floor) without its checks, which this
        distribution's probabilities passed already; normalised again as the constructor does, so
        the probabilities are the same bits. Conditioning runs on every rank refresh."""
        out = object.__new__(type(self))
        probs = self.probs / self.probs.sum()
        probs.setflags(write=False)
        object.__setattr__(out, "probs", probs)
        object.__setattr__(out, "grid", self.grid)
        object.__setattr__(out, "floor", floor)
        return out

    def sample(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        """Draw lengths (uniform within the chosen bin)."""
        p, lo, hi = self._bins()
        bins = rng.choice(len(p), size=size, p=p)
        return rng.integers(lo[bins], hi[bins] + 1)


@dataclass(frozen=True)
class _PointDistribution(LengthDistribution):
    """A sure length: all mass on exactly `floor` tokens (uniform-in-bin does not apply)."""

    def _bins(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = np.zeros(self.grid.num_bins)
        b = int(self.grid.bin_of(self.floor))
        p[b] = 1.0
        lo = np.maximum(self.grid.lo, self.floor)
        hi = np.where(np.arange(self.grid.num_bins) == b, self.floor, self.grid.hi)
        return p, lo, np.maximum(hi, lo)

    def given_at_least(self, attained: int) -> "LengthDistribution":
        return self if attained <= self.floor else LengthDistribution.point(attained, self.grid)
