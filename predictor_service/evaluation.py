"""Test-split evaluation against baselines, and the replay export for the scheduling simulator.

Every method sees the test split as a stream in batches of 32: predict the batch, then report its
true lengths (what the router does), so history-based methods learn as they go exactly as in
serving. History starts from the last 4096 training completions for every history-based method.

Metrics (all on the shared 64-bin grid):
- NLL: -log P(bin of the true length), nats.
- RPS: ranked probability score over bins, i.e. CRPS of log-length in bin units (lower is better).
- Kendall tau between predicted medians (mean breaks ties) and true lengths: what SJF-like
  ranking needs.
- cover50 / cover90: share of true lengths inside the central 50 % / 90 % intervals.
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from sagesched.distribution import LengthDistribution, grid
from sagesched.predictor.config import PredictorSettings
from sagesched.predictor.core import Predictor, summarize
from sagesched.predictor.data import Example
from sagesched.predictor.features import FeatureConfig, featurize
from sagesched.predictor.model import LengthNet, NetConfig, collate
from sagesched.predictor.training import example_query
from sagesched.predictor.types import CompletionRecord

BATCH = 32
WARM_HISTORY = 4096


@dataclass
class Scores:
    method: str
    nll: float | None
    rps: float | None
    tau: float
    cover50: float | None
    cover90: float | None


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


def global_histogram(train: Sequence[Example], n: int) -> np.ndarray:
    h = LengthDistribution.from_samples(_lengths(train), smoothing=0.01).probs
    return np.tile(h, (n, 1))


def length_bucket_histograms(train: Sequence[Example], test: Sequence[Example]) -> np.ndarray:
    """AIBrix-style: one histogram per power-of-two prompt-length bucket."""
    bucket = lambda es: np.floor(np.log2(np.maximum([e.prompt_tokens for e in es], 1))).astype(int)  # noqa: E731
    btr, bte = bucket(train), bucket(test)
    ltr = _lengths(train)
    global_h = LengthDistribution.from_samples(ltr, smoothing=0.01).probs
    table = {}
    for b in np.unique(bte):
        sel = ltr[btr == b]
        table[b] = LengthDistribution.from_samples(sel, smoothing=0.01).probs if len(sel) >= 20 else global_h
    return np.stack([table[b] for b in bte])


def point_regressor_tau(train: Sequence[Example], test: Sequence[Example], cfg: FeatureConfig) -> Scores:
    """Mean log-length regressor on the same features (MSE); a point, so only its ranking counts."""
    from scipy.stats import kendalltau

    torch.manual_seed(0)
    net = LengthNet(NetConfig(num_bins=1))
    feats = [featurize(example_query(e), cfg, e.prompt_chars) for e in train]
    y = torch.log1p(torch.as_tensor(_lengths(train), dtype=torch.float32))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(3):
        for idx in torch.randperm(len(feats)).split(256):
            out = net(*collate([feats[i] for i in idx]))[:, 0]
            loss = ((out - y[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = net(*collate([featurize(example_query(e), cfg, e.prompt_chars) for e in test]))[:, 0].numpy()
    return Scores("point regressor (mean log-length)", None, None,
                  float(kendalltau(pred, _lengths(test)).statistic), None, None)


def stream_predictor(predictor: Predictor, warm: Sequence[Example], test: Sequence[Example],
                     model: str = "sharegpt", with_text: bool = True) -> np.ndarray:
    """Warm the history with `warm`, then predict-then-report `test` in batches; returns probs."""
    def records(es: Sequence[Example]) -> list[CompletionRecord]:
        return [CompletionRecord(example_query(e, model, with_text), e.output_tokens) for e in es]

    for i in range(0, len(warm), 256):
        predictor.report(records(warm[i:i + 256]))
    out = []
    for i in range(0, len(test), BATCH):
        chunk = test[i:i + BATCH]
        probs, _, _ = predictor.predict_probs([example_query(e, model, with_text) for e in chunk])
        out.append(probs)
        predictor.report(records(chunk))
    return np.concatenate(out)


def evaluate(net: LengthNet, features: FeatureConfig, splits: dict[str, list[Example]],
             settings: PredictorSettings | None = None, log: Callable[[str], None] = print) -> list[Scores]:
    settings = settings or PredictorSettings()
    settings = replace(settings, online_every=0, prediction_memory=0)
    train, test = splits["train"], splits["test"]
    warm = train[-WARM_HISTORY:]
    y = _lengths(test)
    rows = [score_probs("global histogram", global_histogram(train, len(test)), y),
            score_probs("prompt-length buckets (AIBrix-style)", length_bucket_histograms(train, test), y),
            point_regressor_tau(train, test, features)]
    hist_only = Predictor(None, replace(settings, history_key="prompt_length", blend_strength=1e-9), features)
    rows.append(score_probs("history only (prompt-length kNN)", stream_predictor(hist_only, warm, test), y))
    with torch.no_grad():
        logp, _ = net.calibrated(*collate([featurize(example_query(e), features, e.prompt_chars) for e in test]))
    rows.append(score_probs("ours: network only", logp.exp().double().numpy(), y))
    rows.append(score_probs("ours: network + history (length key, no text)",
                            stream_predictor(Predictor(net, replace(settings, history_key="prompt_length"), features),
                                             warm, test, with_text=False), y))
    rows.append(score_probs("ours: network + history + drift", stream_predictor(Predictor(net, settings, features), warm, test), y))
    for r in rows:
        log(format_row(r))
    return rows


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def format_row(r: Scores) -> str:
    return f"| {r.method} | {_fmt(r.nll)} | {_fmt(r.rps)} | {r.tau:.3f} | {_fmt(r.cover50)} | {_fmt(r.cover90)} |"


TABLE_HEADER = "| method | NLL (nats/bin) ↓ | RPS (bins) ↓ | Kendall τ ↑ | cover 50% | cover 90% |\n|---|---|---|---|---|---|"


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
        probs, _, _ = predictor.predict_probs([example_query(e, model) for e in chunk])
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
