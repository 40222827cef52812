"""History-only output-length estimator: the router's fallback until (and whenever) the predictor
service cannot answer.

P(L | model, prompt-length bucket) as counts over the shared grid, learned online from completed
requests. A bucket with little history leans on its model's overall distribution, and that on the
uniform prior, with pseudo-count weights — so the first request of a new model still gets an answer
and a bucket's own shape takes over as its evidence grows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sagesched.distribution import LengthDistribution, LengthGrid, grid


def prompt_bucket(prompt_tokens: int) -> int:
    """Half-octave buckets of prompt length: 0 for ≤1 token, then every factor √2."""
    return int(2 * np.log2(max(prompt_tokens, 1)))


@dataclass
class HistoryEstimator:
    grid: LengthGrid = field(default_factory=grid)
    bucket_prior: float = 20.0  # pseudo-counts of the model-wide shape inside each bucket
    model_prior: float = 2.0  # pseudo-counts of uniform inside the model-wide shape
    _counts: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    _model_counts: dict[str, np.ndarray] = field(default_factory=dict)
    _cache: dict[tuple[str, int], LengthDistribution] = field(default_factory=dict)

    def observe(self, model: str, prompt_tokens: int, output_tokens: int) -> None:
        """Record one completed request (only completions: they are the lengths we know)."""
        b = int(self.grid.bin_of(output_tokens))
        for key, table in (((model, prompt_bucket(prompt_tokens)), self._counts), (model, self._model_counts)):
            if key not in table:
                table[key] = np.zeros(self.grid.num_bins)
            table[key][b] += 1.0
        self._cache = {k: v for k, v in self._cache.items() if k[0] != model}

    def fit(self, model: str, prompts: np.ndarray, outputs: np.ndarray) -> None:
        for p, o in zip(np.asarray(prompts).tolist(), np.asarray(outputs).tolist()):
            self.observe(model, p, o)

    def _model_shape(self, model: str) -> np.ndarray:
        counts = self._model_counts.get(model, np.zeros(self.grid.num_bins))
        uniform = np.full(self.grid.num_bins, 1.0 / self.grid.num_bins)
        return (counts + self.model_prior * uniform) / (counts.sum() + self.model_prior)

    def predict(self, model: str, prompt_tokens: int) -> LengthDistribution:
        """The distribution for a new request; the same object until new history arrives (so
        callers may cache work keyed on it)."""
        key = (model, prompt_bucket(prompt_tokens))
        if key not in self._cache:
            counts = self._counts.get(key, np.zeros(self.grid.num_bins))
            probs = counts + self.bucket_prior * self._model_shape(model)
            self._cache[key] = LengthDistribution(probs, self.grid)
        return self._cache[key]
