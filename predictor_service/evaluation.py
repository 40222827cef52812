"""Scoring of predicted distributions, streamed replay, and the replay export for the simulator.

A method sees a split as a stream in batches of 32: predict the batch, then report true lengths
(what the router does), so history-based methods learn as they go exactly as in serving
(comparison.py runs every predictor mode through it).

Metrics (all on the shared 64-bin grid):
- NLL: -log P(bin of the true length), nats.
- RPS: ranked probability score over bins, i.e. CRPS of log-length in bin units (lower is better).
- Kendall tau between predicted medians (mean breaks ties) and true lengths: what SJF-like
  ranking needs.
- cover50 / cover90: share of true lengths inside the central 50 % / 90 % intervals.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from sagesched.distribution import LengthDistribution, grid
from sagesched.predictor.core import Predictor, summarize
from sagesched.predictor.data import Example
from sagesched.predictor.training import example_query
from sagesched.predictor.types import CompletionRecord, PredictQuery

BATCH = 32


@dataclass
class Scores:
    method: str
    nll: float
    rps: float  # CRPS of log-length, in bins
    tau: float
    cover50: float
    cover90: float


def score_probs(method: str, probs: np.ndarray, lengths: np.ndarray) -> Scores:
    from scipy.stats import kendalltau

    g = grid()
    bins = g.bin_of(lengths)
    p = np.clip(probs, 1e-12, None)
    p = p / p.sum(1, keepdims=True)
    nll = float(-np.log(p[np.arange(len(bins)), bins]).mean())
    cdf = np.cumsum(p, 1)
    step = (np.arange(g.num_bins)[None, :] >= bins[:, None]).astype(np.float64)
    rps = float(((cdf - step) ** 2).sum(1).mean())
    s = summarize(p, g, (0.05, 0.25, 0.5, 0.75, 0.95))
    tau = float(kendalltau(s.quantiles[0.5] + 1e-6 * s.mean, lengths).statistic)
    c50 = float(((s.quantiles[0.25] <= lengths) & (lengths <= s.quantiles[0.75])).mean())
    c90 = float(((s.quantiles[0.05] <= lengths) & (lengths <= s.quantiles[0.95])).mean())
    return Scores(method, nll, rps, tau, c50, c90)


def _lengths(examples: Sequence[Example]) -> np.ndarray:
    return np.array([e.output_tokens for e in examples])


class StreamedMethod(Protocol):
    """What a predictor must offer to be replayed: core.Predictor, comparison.BucketFloor."""

    def predict_probs(self, queries: Sequence[PredictQuery]) -> tuple[np.ndarray, np.ndarray]: ...
    def report(self, records: Sequence[CompletionRecord]) -> int: ...


def stream_predictor(method: StreamedMethod, warm: Sequence[Example], test: Sequence[Example],
                     model: str = "sharegpt", with_text: bool = True, report_lag: int = 0,
                     batch: int = BATCH) -> np.ndarray:
    """Report `warm` as history, then predict `test` in order in batches; a request's completion is
    reported once `report_lag` later requests have been predicted (0: right after its batch, as a
    router with instant completions would). Returns the probabilities, one row per test request."""
    def records(es: Sequence[Example]) -> list[CompletionRecord]:
        return [CompletionRecord(example_query(e, model, with_text), e.output_tokens) for e in es]

    for i in range(0, len(warm), 256):
        method.report(records(warm[i:i + 256]))
    out = []
    reported = 0
    for i in range(0, len(test), batch):
        chunk = test[i:i + batch]
        out.append(method.predict_probs([example_query(e, model, with_text) for e in chunk])[0])
        done = max(reported, i + len(chunk) - report_lag)
        method.report(records(test[reported:done]))
        reported = done
    return np.concatenate(out) if out else np.zeros((0, grid().num_bins))


# --- export for the scheduling simulator --------------------------------------------------------
@dataclass(frozen=True)
class ReplayRow:
    prompt_tokens: int
    true_output_tokens: int
    distribution: LengthDistribution


def replay_rows(predictor: Predictor, examples: Sequence[Example], model: str = "sharegpt",
                online: bool = True) -> list[ReplayRow]:
    """(prompt tokens, true output tokens, predicted distribution) for each held-out example, in
    order. With `online`, each batch's truths are reported after it is predicted, as in serving."""
    rows: list[ReplayRow] = []
    g = predictor.grid
    for i in range(0, len(examples), BATCH):
        chunk = examples[i:i + BATCH]
        probs, _ = predictor.predict_probs([example_query(e, model) for e in chunk])
        rows.extend(ReplayRow(e.prompt_tokens, e.output_tokens, LengthDistribution(p, g)) for e, p in zip(chunk, probs))
        if online:
            predictor.report([CompletionRecord(example_query(e, model), e.output_tokens) for e in chunk])
    return rows


def export_replay(rows: Sequence[ReplayRow], path: Path) -> Path:
    """NPZ with prompt_tokens, true_output_tokens, probs (n × bins), grid_num_bins, grid_max_length;
    a .csv path instead writes one row per request with the probabilities as extra columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = rows[0].distribution.grid if rows else grid()
    probs = np.stack([r.distribution.probs for r in rows]) if rows else np.zeros((0, g.num_bins))
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["prompt_tokens", "true_output_tokens"] + [f"p{i}" for i in range(g.num_bins)])
            for r, p in zip(rows, probs):
                w.writerow([r.prompt_tokens, r.true_output_tokens] + [f"{x:.6g}" for x in p])
    else:
        np.savez_compressed(path, prompt_tokens=np.array([r.prompt_tokens for r in rows]),
                            true_output_tokens=np.array([r.true_output_tokens for r in rows]), probs=probs,
                            grid_num_bins=g.num_bins, grid_max_length=g.max_length)
    return path
