"""Checkpoints: the network (weights, calibration, config) and optionally the history.

A `CheckpointStore` says where the newest checkpoint is. The file store keeps a `LATEST` pointer
file next to versioned checkpoint files and replaces it atomically, so a reader never sees half a
checkpoint; a Redis-backed store (several predictor replicas sharing one pointer) only has to
implement the same two methods.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import torch

from sagesched.predictor.features import FeatureConfig
from sagesched.predictor.model import LengthNet, NetConfig

FORMAT = "sagesched-predictor/1"


def save_checkpoint(path: Path, net: LengthNet, features: FeatureConfig, history: dict | None = None,
                    meta: dict | None = None) -> Path:
    """Write atomically (tmp + rename). Weights are stored in float16: they are small numbers
    learned with weight decay, and the halved size keeps the committed checkpoint well under 5 MB."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() and v.ndim > 0 else v) for k, v in net.state_dict().items()}
    payload = {"format": FORMAT, "net_config": asdict(net.config), "features": asdict(features),
               "state_dict": state, "history": history, "meta": meta or {}}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> tuple[LengthNet, FeatureConfig, dict | None, dict]:
    payload = torch.load(Path(path), map_location="cpu", weights_only=False)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a predictor checkpoint ({payload.get('format')!r})")
    net = LengthNet(NetConfig(**payload["net_config"]))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    net.eval()
    return net, FeatureConfig(**payload["features"]), payload.get("history"), payload.get("meta", {})


class CheckpointStore(Protocol):
    def latest(self) -> Path | None: ...
    def publish(self, net: LengthNet, features: FeatureConfig, history: dict | None, meta: dict) -> Path: ...


class FileCheckpointStore:
    """Versioned files in one directory plus a LATEST pointer; keeps the newest `keep` files."""

    def __init__(self, directory: Path, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def latest(self) -> Path | None:
        pointer = self.directory / "LATEST"
        if not pointer.exists():
            return None
        path = self.directory / pointer.read_text().strip()
        return path if path.exists() else None

    def publish(self, net: LengthNet, features: FeatureConfig, history: dict | None, meta: dict) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = save_checkpoint(self.directory / f"predictor-{time.time_ns()}.pt", net, features, history, meta)
        tmp = self.directory / "LATEST.tmp"
        tmp.write_text(path.name)
        os.replace(tmp, self.directory / "LATEST")
        for old in sorted(self.directory.glob("predictor-*.pt"))[: -self.keep]:
            old.unlink(missing_ok=True)
        return path
