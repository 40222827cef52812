"""Two (and three) predictor replicas share semantic history through a real redis-server."""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from sagesched.distribution import LengthDistribution
from sagesched.predictor.client import ClientSettings, PredictorClient
from sagesched.predictor.config import PredictorSettings
from sagesched.predictor.server import RunningServer, start_server
from sagesched.predictor.types import CompletionRecord

from tests.conftest import eventually
from tests.predictor.conftest import query

PROMPT = "Explain quantum computing in simple terms"


@pytest.fixture
def start_replica(redis_url) -> Iterator:
    started: list[RunningServer] = []

    def start(url: str = redis_url) -> RunningServer:
        settings = replace(PredictorSettings(), mode="semantic-history", online_every=0, redis_url=url)
        started.append(start_server(settings))
        return started[-1]

    yield start
    for s in started:
        s.stop(grace=0)


def client(replica: RunningServer) -> PredictorClient:
    return PredictorClient(f"127.0.0.1:{replica.port}", fallback=lambda q: LengthDistribution.uniform(),
                           settings=ClientSettings(deadline_s=5.0, cache_size=0))


async def test_a_completion_reported_to_one_replica_is_learned_by_the_other(start_replica):
    a, b = start_replica(), start_replica()
    async with client(a) as to_a, client(b) as to_b:
        before = (await to_b.predict(query(PROMPT))).distribution
        assert await to_a.report([CompletionRecord(query(PROMPT), 2500) for _ in range(20)]) == 20
        await eventually(lambda: b.feed.applied == 20, what="replica b applied a's 20 completions")
        after = (await to_b.predict(query(PROMPT))).distribution
    assert before.quantile(0.5) < 1000 < 2000 < after.quantile(0.5)
    # a applied its own reports at once and skipped them on the way back: no double counting.
    assert a.predictor.semantic.sizes() == {"m": 20} == b.predictor.semantic.sizes()
    assert a.feed.applied == 0 and a.feed.published == 20


async def test_a_replica_started_later_begins_with_the_shared_history(start_replica):
    a = start_replica()
    async with client(a) as to_a:
        await to_a.report([CompletionRecord(query(f"{PROMPT} #{i}", model=f"model-{i % 2}"), 300) for i in range(30)])
    late = start_replica()
    await eventually(lambda: late.predictor.semantic.sizes() == {"model-0": 15, "model-1": 15},
                     what="the late replica loaded both models' windows")


async def test_reports_and_predictions_go_on_while_redis_is_down(start_replica, redis_server):
    a, b = start_replica(), start_replica()
    redis_server.stop()
    async with client(a) as to_a:
        start = time.monotonic()
        assert await to_a.report([CompletionRecord(query(PROMPT), 2500) for _ in range(10)]) == 10
        reported_in = time.monotonic() - start
        pred = await to_a.predict(query(PROMPT))
    # Learned locally and answered from it; the lost publication is counted, not retried forever.
    assert pred.source == "history" and pred.distribution.quantile(0.5) > 1000
    assert a.feed.publish_errors == 1 and reported_in < 4.0  # a deadline against hangs (timeouts are 1 s)
    assert b.predictor.semantic.sizes() == {}


def test_entries_from_a_replica_with_another_embedder_are_skipped(redis_url):
    from sagesched.distribution import grid
    from sagesched.predictor.embedders import HashedEmbedder
    from sagesched.predictor.semantic import SemanticHistory
    from sagesched.predictor.shared_window import RedisWindowFeed

    wide, narrow = HashedEmbedder(dim=256), HashedEmbedder(dim=64)  # two vector spaces
    writer = RedisWindowFeed(redis_url, SemanticHistory(narrow, grid())).start()
    reader_history = SemanticHistory(wide, grid())
    reader = RedisWindowFeed(redis_url, reader_history, block_s=0.05)  # polled by hand, below
    try:
        writer.history.report([query(PROMPT)] * 3, [100, 200, 300])
        assert writer.published == 3
        assert reader.poll() == 0 and reader_history.sizes() == {}
    finally:
        writer.stop()
        reader.stop()
