"""The predictor: network distribution, shifted for drift, blended with the history's — or, by
setting (config.MODES), the paper's semantic history alone or mixed into it.

Flow for a batch of queries (parse → featurize → network → drift shift → history → blend → cap):
one network pass gives per-bin log-probabilities and the embeddings used as history keys; a
per-model drift offset (recency-weighted mean of actual-minus-predicted log-length, in bins)
slides the network's distribution along the log-spaced grid, so a model update that makes every
answer longer moves predictions after a few hundred reports even for prompts with no close
neighbours; the history histogram is mixed in by its relevance weight; finally mass above an
explicit `max_tokens` is moved onto it, because the engine will stop there for sure.

Reports update the history and the drift offset immediately (under a lock held for microseconds)
and feed a replay buffer from which the online learner fine-tunes the network in the background.
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from sagesched.distribution import LengthDistribution, LengthGrid
from sagesched.predictor.config import PredictorSettings
from sagesched.predictor.features import FeatureConfig, Features, featurize, prompt_token_estimate
from sagesched.predictor.history import HistoryBuffer, blend_weight, prompt_length_keys
from sagesched.predictor.model import LengthNet, collate
from sagesched.predictor.semantic import SemanticHistory
from sagesched.predictor.types import CompletionRecord, Prediction, PredictQuery


class PredictorObserver(Protocol):
    """Where the core reports what metrics need; metrics.py implements it with Prometheus."""

    def on_predict(self, batch_size: int, seconds: float) -> None: ...
    def on_report(self, accepted: int, coverage: list[tuple[bool, bool]], history_size: int) -> None: ...


class _NullObserver:
    def on_predict(self, batch_size: int, seconds: float) -> None:
        pass

    def on_report(self, accepted: int, coverage: list[tuple[bool, bool]], history_size: int) -> None:
        pass


@dataclass
class BatchSummary:
    """Vectorised summaries of many distributions (LengthDistribution.quantile is per object)."""

    mean: np.ndarray
    quantiles: dict[float, np.ndarray]


def summarize(probs: np.ndarray, grid_: LengthGrid, qs: Sequence[float]) -> BatchSummary:
    lo = grid_.lo.astype(np.float64)
    width = (grid_.hi - grid_.lo + 1).astype(np.float64)
    mean = probs @ (lo + (width - 1) / 2)
    cum = np.cumsum(probs, axis=1)
    out = {}
    for q in qs:
        b = np.minimum((cum < q).sum(axis=1), grid_.num_bins - 1)
        before = np.take_along_axis(cum, b[:, None], 1)[:, 0] - probs[np.arange(len(b)), b]
        pb = np.maximum(probs[np.arange(len(b)), b], 1e-12)
        frac = np.clip((q - before) / pb, 0.0, 1.0)
        out[q] = lo[b] + frac * (width[b] - 1)
    return BatchSummary(mean, out)


def shift_bins(probs: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Slide each row by a fractional number of bins (linear interpolation; mass piles up at the
    ends rather than falling off the grid)."""
    nb = probs.shape[1]
    idx = np.arange(nb)[None, :] - shift[:, None]
    lo = np.floor(idx)
    frac = idx - lo
    lo = lo.astype(np.int64)
    a = np.take_along_axis(probs, np.clip(lo, 0, nb - 1), 1)
    b = np.take_along_axis(probs, np.clip(lo + 1, 0, nb - 1), 1)
    out = (1 - frac) * a + frac * b
    return out / out.sum(axis=1, keepdims=True)


def cap_at_max_tokens(probs: np.ndarray, max_tokens: np.ndarray, grid_: LengthGrid) -> np.ndarray:
    """Move mass above each row's max_tokens (when set) into the bin holding max_tokens."""
    capped = max_tokens > 0
    if not capped.any():
        return probs
    out = probs.copy()
    cap_bin = grid_.bin_of(np.where(capped, max_tokens, grid_.max_length))
    above = np.arange(grid_.num_bins)[None, :] > cap_bin[:, None]
    above &= capped[:, None]
    spill = (out * above).sum(axis=1)
    out[above] = 0.0
    out[np.arange(len(out)), cap_bin] += spill
    return out


class Predictor:
    def __init__(self, net: LengthNet | None, settings: PredictorSettings | None = None,
                 features: FeatureConfig | None = None, grid_: LengthGrid | None = None,
                 observer: PredictorObserver | None = None, semantic: SemanticHistory | None = None) -> None:
        from sagesched.distribution import grid as shared_grid

        self.settings = settings or PredictorSettings()
        if self.settings.mode != "network" and semantic is None:
            raise ValueError(f"mode {self.settings.mode!r} needs a SemanticHistory")
        self.semantic = semantic
        self.feature_config = features or FeatureConfig()
        self.grid = grid_ or shared_grid()
        self.observer: PredictorObserver = observer or _NullObserver()
        self.net = net
        self.version = 0  # bumped by every network swap
        self.histories: dict[str, HistoryBuffer] = {}
        self._drift: dict[str, tuple[float, float]] = {}  # model -> (weighted sum, weight)
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()  # request id -> q05,q25,q75,q95
        self.replay: deque[tuple[Features, int]] = deque(maxlen=self.settings.replay_capacity)
        self.learnable_reports = 0
        self.lock = threading.Lock()
        self._report_event = threading.Condition(self.lock)

    # --- prediction ----------------------------------------------------------------------------
    def _network(self, feats: list[Features]) -> tuple[np.ndarray, np.ndarray]:
        net = self.net
        if net is None:
            uniform = np.full((len(feats), self.grid.num_bins), 1.0 / self.grid.num_bins)
            return uniform, np.zeros((len(feats), 1), dtype=np.float32)
        with torch.inference_mode():
            logp, emb = net.calibrated(*collate(feats))
        return logp.exp().double().numpy(), emb.numpy()

    def _keys(self, queries: Sequence[PredictQuery], emb: np.ndarray) -> np.ndarray:
        if self.settings.history_key == "prompt_length":
            return prompt_length_keys(np.array([prompt_token_estimate(q) for q in queries]))
        return emb

    def predict_probs(self, queries: Sequence[PredictQuery]) -> tuple[np.ndarray, np.ndarray]:
        """Bin probabilities per query, and the share of each that came from history."""
        mode = self.settings.mode
        if mode == "semantic-history":
            probs, _ = self.semantic.predict(queries)
            weight = np.ones(len(queries))
        else:
            probs, weight = self._network_with_history(queries)
        if mode == "blend":
            semantic, found = self.semantic.predict(queries)
            w = found / (found + self.settings.semantic_blend_strength)
            probs = (1 - w[:, None]) * probs + w[:, None] * semantic
            weight = 1 - (1 - weight) * (1 - w)
        probs = cap_at_max_tokens(probs, np.array([q.max_tokens for q in queries]), self.grid)
        return probs, weight

    def _network_with_history(self, queries: Sequence[PredictQuery]) -> tuple[np.ndarray, np.ndarray]:
        feats = [featurize(q, self.feature_config) for q in queries]
        net_probs, emb = self._network(feats)
        keys = self._keys(queries, emb)
        probs = net_probs
        weight = np.zeros(len(queries))
        with self.lock:
            shift = np.array([self._drift_offset(q.model) for q in queries])
            if np.any(shift != 0):
                probs = shift_bins(probs, shift)
            for model in {q.model for q in queries}:
                buf = self.histories.get(model)
                if buf is None or buf.size == 0 or buf.keys.shape[1] != keys.shape[1]:
                    continue
                rows = np.array([i for i, q in enumerate(queries) if q.model == model])
                hist, relevance = buf.query(keys[rows])
                w = blend_weight(relevance, self.settings.blend_strength)
                probs[rows] = (1 - w[:, None]) * probs[rows] + w[:, None] * hist
                weight[rows] = w
        return probs, weight

    def predict_batch(self, queries: Sequence[PredictQuery]) -> list[Prediction]:
        import time

        start = time.perf_counter()
        probs, weight = self.predict_probs(queries)
        if self.settings.prediction_memory > 0:
            self._remember(queries, probs)
        out = []
        for p, w in zip(probs, weight):
            source = "prior" if self.net is None and w == 0 else (
                "model" if w < 0.05 else ("history" if w > 0.95 else "blend"))
            out.append(Prediction(LengthDistribution(p, self.grid), source, float(w)))
        self.observer.on_predict(len(queries), time.perf_counter() - start)
        return out

    def predict(self, query: PredictQuery) -> Prediction:
        return self.predict_batch([query])[0]

    def _remember(self, queries: Sequence[PredictQuery], probs: np.ndarray) -> None:
        ids = [q.request_id for q in queries]
        if not any(ids):
            return
        s = summarize(probs, self.grid, (0.05, 0.25, 0.75, 0.95))
        bounds = np.stack([s.quantiles[q] for q in (0.05, 0.25, 0.75, 0.95)], axis=1)
        with self.lock:
            for rid, b in zip(ids, bounds):
                if rid:
                    self._recent[rid] = b
            while len(self._recent) > self.settings.prediction_memory:
                self._recent.popitem(last=False)

    # --- learning from completions --------------------------------------------------------------
    def _drift_offset(self, model: str) -> float:
        s, w = self._drift.get(model, (0.0, 0.0))
        return s / (w + self.settings.drift_prior)

    def report(self, records: Sequence[CompletionRecord]) -> int:
        """Learn from finished requests at once: history (semantic and/or the network's), drift
        offset, replay buffer; score the remembered predictions for calibration."""
        records = [r for r in records if r.learnable]
        if not records:
            return 0
        queries = [r.query for r in records]
        lengths = np.array([r.output_tokens for r in records], dtype=np.int64)
        if self.semantic is not None:
            self.semantic.report(queries, lengths)
        if self.settings.mode != "semantic-history":
            self._learn_network(queries, lengths)
        coverage: list[tuple[bool, bool]] = []
        with self.lock:
            for q, n in zip(queries, lengths):
                b = self._recent.pop(q.request_id, None) if q.request_id else None
                if b is not None:
                    coverage.append((bool(b[1] <= n <= b[2]), bool(b[0] <= n <= b[3])))
            self.learnable_reports += len(records)
            history_size = sum(h.size for h in self.histories.values())
            self._report_event.notify_all()
        if self.semantic is not None:
            history_size += sum(self.semantic.sizes().values())
        self.observer.on_report(len(records), coverage, history_size)
        return len(records)

    def _learn_network(self, queries: list[PredictQuery], lengths: np.ndarray) -> None:
        feats = [featurize(q, self.feature_config) for q in queries]
        net_probs, emb = self._network(feats)
        keys = self._keys(queries, emb)
        bins = self.grid.bin_of(lengths)
        # Residual against the un-shifted network, in bins: what a drifted deployment adds.
        residual = bins - net_probs @ np.arange(self.grid.num_bins)
        with self.lock:
            d = self.settings.drift_decay
            for q, r in zip(queries, residual):
                s, w = self._drift.get(q.model, (0.0, 0.0))
                self._drift[q.model] = (d * s + float(r), d * w + 1.0)
            for model in {q.model for q in queries}:
                rows = [i for i, q in enumerate(queries) if q.model == model]
                buf = self.histories.get(model)
                if buf is None or buf.keys.shape[1] != keys.shape[1]:
                    buf = self.histories[model] = HistoryBuffer(keys.shape[1], self.settings.history, self.grid)
                buf.add(keys[rows], lengths[rows],
                        np.array([prompt_token_estimate(queries[i]) for i in rows]), [feats[i] for i in rows])
            for f, b in zip(feats, bins):
                self.replay.append((f, int(b)))

    def swap_net(self, net: LengthNet) -> None:
        """Install a retrained network and re-key the history under it. Keys are recomputed from
        stored features outside the lock; entries that arrive meanwhile are fixed up inside it."""
        net.eval()
        with self.lock:
            snapshot = {m: (h.count, [(i, h.features[i]) for i in range(h.size)]) for m, h in self.histories.items()}
        new_keys = {m: self._embed_entries(net, entries) for m, (_, entries) in snapshot.items()}
        with self.lock:
            for model, (count, _) in snapshot.items():
                buf = self.histories[model]
                slots, keys = new_keys[model]
                if self.settings.history_key == "embedding" and len(slots):
                    buf.keys[slots] = keys
                late = buf.entries_since(count)
                late_slots, late_keys = self._embed_entries(net, [(i, buf.features[i]) for i in late])
                if self.settings.history_key == "embedding" and len(late_slots):
                    buf.keys[late_slots] = late_keys
            self.net = net
            self.version += 1

    @staticmethod
    def _embed_entries(net: LengthNet, entries: list[tuple[int, Features | None]]) -> tuple[np.ndarray, np.ndarray]:
        usable = [(i, f) for i, f in entries if f is not None]
        if not usable:
            return np.zeros(0, dtype=np.int64), np.zeros((0, net.config.hidden), dtype=np.float32)
        with torch.inference_mode():
            _, emb = net.calibrated(*collate([f for _, f in usable]))
        return np.array([i for i, _ in usable]), emb.numpy()

    def wait_for_reports(self, at_least: int, timeout: float) -> bool:
        """Block until this many learnable reports have arrived (the online learner's trigger)."""
        with self._report_event:
            return self._report_event.wait_for(lambda: self.learnable_reports >= at_least, timeout)

    # --- persistence ----------------------------------------------------------------------------
    def history_state(self) -> dict:
        with self.lock:
            return {"histories": {m: h.state() for m, h in self.histories.items()},
                    "drift": dict(self._drift), "history_key": self.settings.history_key}

    def load_history_state(self, state: dict) -> None:
        if state.get("history_key") != self.settings.history_key:
            return  # keys from another key space would match nonsense
        with self.lock:
            self.histories = {m: HistoryBuffer.from_state(s, self.settings.history, self.grid)
                              for m, s in state.get("histories", {}).items()}
            self._drift = {m: tuple(v) for m, v in state.get("drift", {}).items()}
