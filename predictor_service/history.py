"""Recent completions of one model, queried as nearest neighbours → an empirical distribution.

Why: the network knows the corpus it was trained on; the history knows *this* deployment now — the
serving model's own tokenizer and verbosity, the traffic mix, and a model update that made answers
longer. Each stored completion keeps a key vector (the network's normalised embedding of its
prompt, or an encoding of prompt length alone for traces without text) and its actual length. A
query takes the k most relevant entries, where relevance = similarity kernel × recency decay, and
returns their weighted length histogram plus the total relevance, from which the caller derives
the blend weight (more and closer history → trust it more).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sagesched.distribution import LengthGrid
from sagesched.predictor.features import Features

LENGTH_KEY_CENTERS = np.linspace(0.0, 11.0, 23)  # log(prompt tokens) from 1 to ~60k
LENGTH_KEY_WIDTH = 0.35


def prompt_length_keys(prompt_tokens: np.ndarray) -> np.ndarray:
    """Unit vectors whose dot product falls off with |Δ log prompt length|: lets the same
    neighbour search serve traces that carry only token counts (Azure)."""
    x = np.log(np.maximum(np.asarray(prompt_tokens, dtype=np.float64), 1.0))[:, None]
    k = np.exp(-0.5 * ((x - LENGTH_KEY_CENTERS[None, :]) / LENGTH_KEY_WIDTH) ** 2)
    return (k / np.linalg.norm(k, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class HistoryParams:
    capacity: int = 4096
    k: int = 48
    bandwidth: float = 0.05  # similarity kernel exp((sim - 1) / bandwidth)
    half_life: float = 1500.0  # in reports to this model
    bin_spread: float = 0.25  # mass each neighbour gives to each adjacent bin
    floor: float = 0.02  # uniform mass: a few neighbours must not make any length impossible


class HistoryBuffer:
    """A ring buffer for one model. Not thread-safe: the Predictor holds its lock around calls."""

    def __init__(self, dim: int, params: HistoryParams, grid_: LengthGrid) -> None:
        self.params = params
        self.grid = grid_
        self.keys = np.zeros((params.capacity, dim), dtype=np.float32)
        self.bins = np.zeros(params.capacity, dtype=np.int64)
        self.lengths = np.zeros(params.capacity, dtype=np.int64)
        self.seq = np.zeros(params.capacity, dtype=np.int64)
        self.prompt_tokens = np.zeros(params.capacity, dtype=np.int64)
        self.features: list[Features | None] = [None] * params.capacity
        self.size = 0
        self.count = 0  # reports ever added; the clock for recency

    def add(self, keys: np.ndarray, lengths: np.ndarray, prompt_tokens: np.ndarray,
            features: list[Features | None]) -> None:
        for i in range(len(lengths)):
            slot = self.count % self.params.capacity
            self.keys[slot] = keys[i]
            self.lengths[slot] = lengths[i]
            self.bins[slot] = self.grid.bin_of(int(lengths[i]))
            self.prompt_tokens[slot] = prompt_tokens[i]
            self.features[slot] = features[i]
            self.count += 1
            self.seq[slot] = self.count
            self.size = min(self.size + 1, self.params.capacity)

    def query(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each query row: (histogram over bins summing to 1, total relevance weight)."""
        nb = self.grid.num_bins
        hist = np.zeros((len(q), nb))
        if self.size == 0:
            return hist + 1.0 / nb, np.zeros(len(q))
        n = self.size
        p = self.params
        sims = q @ self.keys[:n].T  # (B, n)
        rel = np.exp((sims - 1.0) / p.bandwidth) * np.exp2(
            -(self.count - self.seq[:n]) / p.half_life)[None, :]
        k = min(p.k, n)
        top = np.argpartition(-rel, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), (len(q), n))
        w = np.take_along_axis(rel, top, axis=1)
        b = self.bins[top]
        rows = np.broadcast_to(np.arange(len(q))[:, None], b.shape)
        np.add.at(hist, (rows, b), w)
        total = w.sum(axis=1)
        return finish_histogram(spread_to_neighbours(hist, p.bin_spread), total, p.floor), total

    def entries_since(self, seq: int) -> np.ndarray:
        """Slots written after report number `seq` (to re-key after a network swap)."""
        return np.nonzero(self.seq[: self.size] > seq)[0]

    def state(self) -> dict:
        n = self.size
        order = np.argsort(self.seq[:n])
        return {"keys": self.keys[:n][order].copy(), "lengths": self.lengths[:n][order].copy(),
                "prompt_tokens": self.prompt_tokens[:n][order].copy(), "count": self.count}

    @classmethod
    def from_state(cls, state: dict, params: HistoryParams, grid_: LengthGrid) -> "HistoryBuffer":
        keys = np.asarray(state["keys"], dtype=np.float32)
        buf = cls(keys.shape[1], params, grid_)
        lengths = np.asarray(state["lengths"])
        buf.add(keys, lengths, np.asarray(state["prompt_tokens"]), [None] * len(lengths))
        # Keep the recency clock where it was, so restored entries are as old as they were.
        shift = int(state["count"]) - buf.count
        buf.count += shift
        buf.seq[: buf.size] += shift
        return buf


def spread_to_neighbours(hist: np.ndarray, spread: float) -> np.ndarray:
    """Give `spread` of each bin's mass to each adjacent bin (the end bins keep what would fall off):
    a length near a bin edge says almost as much about the next bin, and a handful of neighbours
    must not make the bins between them look impossible."""
    out = (1.0 - 2.0 * spread) * hist
    out[:, :-1] += spread * hist[:, 1:]
    out[:, 1:] += spread * hist[:, :-1]
    out[:, 0] += spread * hist[:, 0]
    out[:, -1] += spread * hist[:, -1]
    return out


def finish_histogram(hist: np.ndarray, total: np.ndarray, floor: float) -> np.ndarray:
    """Rows normalised by their total weight (uniform where there was none), then `floor` of the
    mass spread evenly so no length has probability zero."""
    nb = hist.shape[1]
    safe = np.where(total > 0, total, 1.0)
    hist = np.where(total[:, None] > 0, hist / safe[:, None], 1.0 / nb)
    return (1.0 - floor) * hist + floor / nb


def blend_weight(relevance: np.ndarray, strength: float) -> np.ndarray:
    """Share of the history in the mixture: relevance / (relevance + strength). `strength` is how
    many perfectly similar, fresh neighbours it takes to trust history as much as the network."""
    return relevance / (relevance + strength)

