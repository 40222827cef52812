"""Predictor fixtures: the committed checkpoint, and a real gRPC server on a loopback port."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from sagesched.predictor.checkpoint import load_checkpoint
from sagesched.predictor.config import DEFAULT_CHECKPOINT, PredictorSettings
from sagesched.predictor.server import RunningServer, start_server
from sagesched.predictor.types import PredictQuery


@pytest.fixture(scope="session")
def trained():
    """(net, feature config) from the checkpoint that ships with the code."""
    net, features, _, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    return net, features


@pytest.fixture
def settings(tmp_path) -> PredictorSettings:
    return replace(PredictorSettings(), checkpoint_dir=tmp_path / "ckpt", online_every=0)


@pytest.fixture
def server(settings) -> Iterator[RunningServer]:
    running = start_server(settings)
    yield running
    running.stop(grace=0)


def query(text: str, model: str = "m", rid: str = "", **kw) -> PredictQuery:
    return PredictQuery(model=model, prompt=text, request_id=rid, **kw)
