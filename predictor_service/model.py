"""The content network: hashed prompt words + numeric features → probabilities over length bins.

Small on purpose (an embedding bag, two 64-wide layers): it must answer a batch of 32 in well
under a millisecond on a shared CPU, and its checkpoint must stay a few MB. Its penultimate layer
doubles as the similarity space for the history component (similar prompts by what the network
finds length-relevant, not by raw words).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from sagesched.distribution import grid
from sagesched.predictor.features import NUM_NUMERIC, FeatureConfig, Features


@dataclass(frozen=True)
class NetConfig:
    hash_buckets: int = FeatureConfig.hash_buckets
    embed_dim: int = 32
    hidden: int = 64
    num_bins: int = grid().num_bins
    max_length: int = grid().max_length


class LengthNet(nn.Module):
    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.bag = nn.EmbeddingBag(config.hash_buckets, config.embed_dim, mode="mean")
        self.body = nn.Sequential(
            nn.Linear(config.embed_dim + NUM_NUMERIC, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.hidden), nn.ReLU(),
        )
        self.head = nn.Linear(config.hidden, config.num_bins)
        # Post-hoc calibration (fitted on validation data, not trained by NLL).
        self.register_buffer("temperature", torch.ones(()))

    def embed(self, ids: torch.Tensor, offsets: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        """Penultimate representation; an empty bag (no text) embeds as zeros."""
        return self.body(torch.cat([self.bag(ids, offsets), numeric], dim=1))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        """Raw (uncalibrated) logits."""
        return self.head(self.embed(ids, offsets, numeric))

    def calibrated(self, ids, offsets, numeric) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probabilities after temperature, L2-normalised embedding) in one pass."""
        h = self.embed(ids, offsets, numeric)
        logp = torch.log_softmax(self.head(h) / self.temperature, dim=1)
        return logp, nn.functional.normalize(h, dim=1)


def collate(features: Sequence[Features]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features → (flat ids, offsets, numeric) for EmbeddingBag."""
    lengths = [f.ids.size for f in features]
    ids = np.concatenate([f.ids for f in features]) if sum(lengths) else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(features), dtype=np.int64)
    if len(features) > 1:
        np.cumsum(lengths[:-1], out=offsets[1:])
    numeric = np.stack([f.numeric for f in features])
    return torch.from_numpy(ids), torch.from_numpy(offsets), torch.from_numpy(numeric)


def smoothed_targets(bins: torch.Tensor, num_bins: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with `smoothing` mass moved to the two neighbouring bins: a length near a
    bin edge is almost as likely to have landed next door, so the neighbours should not be punished
    like a bin far away (this is what makes the distributions smooth rather than spiky)."""
    t = torch.zeros(len(bins), num_bins)
    t[torch.arange(len(bins)), bins] = 1.0 - smoothing
    left = (bins - 1).clamp(min=0)
    right = (bins + 1).clamp(max=num_bins - 1)
    t[torch.arange(len(bins)), left] += smoothing / 2
    t[torch.arange(len(bins)), right] += smoothing / 2
    return t


@dataclass
class TrainConfig:
    epochs: int = 4
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-5
    label_smoothing: float = 0.2
    seed: int = 0


def train_epochs(
    net: LengthNet,
    features: Sequence[Features],
    bins: np.ndarray,
    config: TrainConfig,
    log=None,
) -> None:
    """Minibatch NLL (cross-entropy to smoothed targets) with Adam."""
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    targets_all = torch.as_tensor(bins, dtype=torch.long)
    net.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(features), generator=gen).tolist()
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            ids, offsets, numeric = collate([features[i] for i in idx])
            target = smoothed_targets(targets_all[idx], net.config.num_bins, config.label_smoothing)
            loss = -(target * torch.log_softmax(net(ids, offsets, numeric), dim=1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if log:
            log(f"epoch {epoch + 1}/{config.epochs}: train loss {total / len(features):.4f}")
    net.eval()


@torch.no_grad()
def fit_temperature(net: LengthNet, features: Sequence[Features], bins: np.ndarray) -> float:
    """Temperature minimising validation NLL (grid search: one scalar, cheap, no overfitting risk)."""
    ids, offsets, numeric = collate(features)
    logits = net(ids, offsets, numeric)
    target = torch.as_tensor(bins, dtype=torch.long)
    best = min(
        (float(nn.functional.cross_entropy(logits / t, target)), t)
        for t in np.arange(0.6, 2.01, 0.05)
    )
    net.temperature.fill_(best[1])
    return best[1]


def net_config_dict(config: NetConfig) -> dict:
    return asdict(config)
