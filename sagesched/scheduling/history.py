"""History-only output-length estimator: the router's fallback until (and whenever) the predictor
service cannot answer.

P(L | model, prompt-length bucket) as counts over the shared grid, learned online from completed
requests. A bucket with little history leans on its model's overall distribution, and that on the
uniform prior, with pseudo-count weights — so the first request of a new model still gets an answer
and a bucket's own shape takes over as its evidence grows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sagesched.distribution import LengthDistribution, LengthGrid, grid

# A cached prediction is built again once its bucket's or its model's evidence has grown by this share
# since it was built (by one observation while there are fewer than 1/REFRESH_SHARE of them). Built
# anew at every completion, every request got a distribution object of its own, and the work keyed on
# one (the ladder of remaining-length moments, scheduling/outstanding.py) was redone per request; one
# more observation among hundreds moves the distribution by well under a percent.
REFRESH_SHARE = 1 / 64


def prompt_bucket(prompt_tokens: int) -> int:
    """Half-octave buckets of prompt length: 0 for ≤1 token, then every factor √2."""
    return int(2 * math.log2(max(prompt_tokens, 1)))


def _grown(now: int, then: int) -> bool:
    return now - then >= max(1.0, then * REFRESH_SHARE)


@dataclass
class _Prediction:
    dist: LengthDistribution
    bucket_seen: int  # the bucket's and the model's observations when it was built
    model_seen: int


@dataclass
class HistoryEstimator:
    grid: LengthGrid = field(default_factory=grid)
    bucket_prior: float = 20.0  # pseudo-counts of the model-wide shape inside each bucket
    model_prior: float = 2.0  # pseudo-counts of uniform inside the model-wide shape
    _counts: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    _model_counts: dict[str, np.ndarray] = field(default_factory=dict)
    _seen: dict[tuple[str, int] | str, int] = field(default_factory=dict)  # observations per bucket and per model
    _cache: dict[tuple[str, int], _Prediction] = field(default_factory=dict)

    def observe(self, model: str, prompt_tokens: int, output_tokens: int) -> None:
        """Record one completed request (only completions: they are the lengths we know)."""
        b = self.grid.bin_of_one(output_tokens)
        for key, table in (((model, prompt_bucket(prompt_tokens)), self._counts), (model, self._model_counts)):
            if key not in table:
                table[key] = np.zeros(self.grid.num_bins)
            table[key][b] += 1.0
            self._seen[key] = self._seen.get(key, 0) + 1

    def fit(self, model: str, prompts: np.ndarray, outputs: np.ndarray) -> None:
        for p, o in zip(np.asarray(prompts).tolist(), np.asarray(outputs).tolist()):
            self.observe(model, p, o)

    def _model_shape(self, model: str) -> np.ndarray:
        counts = self._model_counts.get(model, np.zeros(self.grid.num_bins))
        uniform = np.full(self.grid.num_bins, 1.0 / self.grid.num_bins)
        return (counts + self.model_prior * uniform) / (counts.sum() + self.model_prior)

    def predict(self, model: str, prompt_tokens: int) -> LengthDistribution:
        """The distribution for a new request; the same object until enough new history arrives
        (`REFRESH_SHARE`), so callers may cache work keyed on it."""
        key = (model, prompt_bucket(prompt_tokens))
        bucket_seen, model_seen = self._seen.get(key, 0), self._seen.get(model, 0)
        cached = self._cache.get(key)
        if cached is None or _grown(bucket_seen, cached.bucket_seen) or _grown(model_seen, cached.model_seen):
            counts = self._counts.get(key, np.zeros(self.grid.num_bins))
            probs = counts + self.bucket_prior * self._model_shape(model)
            cached = self._cache[key] = _Prediction(LengthDistribution(probs, self.grid), bucket_seen, model_seen)
        return cached.dist
