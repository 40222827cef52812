"""The router must never wait on a dead or slow predictor: every call resolves by its deadline."""
from __future__ import annotations

import asyncio
import threading
from concurrent import futures

import grpc

from sagesched.distribution import LengthDistribution
from sagesched.predictor.client import ClientSettings, PredictorClient
from sagesched.v1 import predictor_pb2_grpc

from tests.conftest import free_port
from tests.predictor.conftest import query

SENTINEL = LengthDistribution.point(777)
HANG_GUARD_S = 10.0  # only catches a hang; the deadline under test is 50 ms


async def test_unreachable_server_yields_fallback_and_counts_it():
    client = PredictorClient(f"127.0.0.1:{free_port()}", fallback=lambda q: SENTINEL,
                             settings=ClientSettings(deadline_s=0.05))
    async with client:
        preds = await asyncio.wait_for(client.predict_many([query("a"), query("b")]), HANG_GUARD_S)
    assert [p.source for p in preds] == ["fallback", "fallback"]
    assert all(p.distribution is SENTINEL for p in preds)
    assert client.fallbacks == 2


class _StuckPredictor(predictor_pb2_grpc.PredictorServicer):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def PredictBatch(self, request, context):
        self.entered.set()
        self.release.wait(HANG_GUARD_S)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")


async def test_slow_server_yields_fallback_by_the_deadline_and_client_recovers_nothing_cached():
    servicer = _StuckPredictor()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    predictor_pb2_grpc.add_PredictorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = PredictorClient(f"127.0.0.1:{port}", fallback=lambda q: SENTINEL,
                                 settings=ClientSettings(deadline_s=0.05))
        async with client:
            pred = await asyncio.wait_for(client.predict(query("slow")), HANG_GUARD_S)
            assert servicer.entered.is_set()  # it really reached the server and waited there
            assert pred.source == "fallback" and client.fallbacks == 1
            # a fallback is not cached: the next call asks the server again
            pred2 = await asyncio.wait_for(client.predict(query("slow")), HANG_GUARD_S)
            assert pred2.source == "fallback" and client.cache_hits == 0 and client.rpc_batches == 2
    finally:
        servicer.release.set()
        server.stop(0).wait()
