"""Synthetic workloads of the paper's regime: uncertain, heavy-tailed outputs, prompts that repeat.

The Azure traces carry lengths only, and every request is a different prompt. The paper's setting
differs in the two ways its scheduler exploits: the same prompt, sampled again (temperature 0.6),
gives widely different output lengths, and the workload mixes classes whose input/output shapes
differ by orders of magnitude. Each mix below draws distinct prompts per class — a prompt length and
a median output length — and then samples every request from one of them, its output
`median · exp(N(0, sample_sigma))`. Every request carries its prompt's key (for history predictors
that match prompts) and its true conditional distribution on the shared grid (what a perfectly
calibrated per-prompt predictor would say: the simulator's `:pred`).

The class shapes are ours, chosen after the published statistics of the paper's datasets:
ShareGPT conversations (short-to-medium prompts, outputs of a few hundred tokens), Alpaca-PubMed
summarisation (long inputs, short outputs) and write_doc_sft (short instructions, long documents);
`heavy` is a single class with a much wider per-prompt spread, for the heavy-tailed case.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sagesched.distribution import LengthGrid, grid
from sagesched.traces import Trace

REPEATS = 4  # requests per distinct prompt, on average


@dataclass(frozen=True)
class RequestClass:
    name: str
    prompt_median: float
    prompt_sigma: float
    prompt_max: int
    output_median: float  # median over prompts of the prompt's median output
    output_sigma: float  # spread of that median across prompts (log scale)
    sample_sigma: float  # spread of one prompt's outputs when sampled again (log scale)
    output_max: int


CHAT = RequestClass("chat", 160, 1.1, 4096, 260, 0.7, 0.6, 4096)
SUMMARIZE = RequestClass("summarize", 2400, 0.4, 7000, 160, 0.4, 0.4, 1024)
WRITE = RequestClass("write", 90, 0.6, 1024, 1500, 0.5, 0.5, 6000)
HEAVY = RequestClass("heavy", 300, 1.0, 4096, 120, 0.8, 1.3, 8000)

MIXES: dict[str, tuple[tuple[float, RequestClass], ...]] = {
    "sharegpt": ((1.0, CHAT),),
    "summarize": ((1.0, SUMMARIZE),),
    "write": ((1.0, WRITE),),
    "mixed": ((0.5, CHAT), (0.25, SUMMARIZE), (0.25, WRITE)),
    "heavy": ((1.0, HEAVY),),
}


def _lognormal_bins(median: float, sigma: float, cap: int, g: LengthGrid) -> np.ndarray:
    """P(length in bin) for round(median·exp(N(0, σ))) clipped to [1, cap], on grid `g`."""
    def cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf((math.log(x) - math.log(median)) / (sigma * math.sqrt(2.0))))

    edges = [cdf(min(float(hi), cap) + 0.5) if lo <= cap else 1.0 for lo, hi in zip(g.lo, g.hi)]
    probs = np.diff(np.concatenate(([0.0], edges)))
    probs[int(g.bin_of(cap))] += 1.0 - edges[-1] if edges[-1] < 1.0 else 0.0
    return np.maximum(probs, 0.0)


def make_mix(name: str, n: int, seed: int = 0, g: LengthGrid | None = None) -> Trace:
    """`n` requests of mix `name` (arrival order = index; the simulator sets arrival times)."""
    if name not in MIXES:
        raise ValueError(f"unknown mix {name!r}; known: {', '.join(MIXES)}")
    g = g or grid()
    rng = np.random.default_rng(seed)
    weights, classes = zip(*MIXES[name])
    distinct = max(1, n // REPEATS)
    kind = rng.choice(len(classes), size=distinct, p=np.asarray(weights) / sum(weights))
    prompt_len = np.empty(distinct, np.int64)
    median_out = np.empty(distinct)
    for k, c in enumerate(classes):
        sel = kind == k
        prompt_len[sel] = np.clip(np.round(c.prompt_median * np.exp(rng.normal(0, c.prompt_sigma, sel.sum()))), 1, c.prompt_max)
        median_out[sel] = np.clip(c.output_median * np.exp(rng.normal(0, c.output_sigma, sel.sum())), 1, c.output_max)
    dists = np.stack([_lognormal_bins(median_out[j], classes[kind[j]].sample_sigma, classes[kind[j]].output_max, g)
                      for j in range(distinct)])
    which = rng.integers(0, distinct, n)
    sigma = np.array([classes[kind[j]].sample_sigma for j in which])
    cap = np.array([classes[kind[j]].output_max for j in which])
    outputs = np.clip(np.round(median_out[which] * np.exp(rng.normal(0, 1, n) * sigma)), 1, cap).astype(np.int64)
    return Trace(name, np.arange(n, dtype=np.float64), prompt_len[which], outputs, dists[which], g, keys=which)
