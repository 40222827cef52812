"""The gRPC service end to end: real server, real grpc clients, over loopback."""
from __future__ import annotations


import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sagesched.distribution import LengthDistribution
from sagesched.predictor.client import ClientSettings, PredictorClient
from sagesched.predictor.types import CompletionRecord
from sagesched.v1 import common_pb2, predictor_pb2, predictor_pb2_grpc

from tests.predictor.conftest import query


def _stub(port: int):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, predictor_pb2_grpc.PredictorStub(channel)


def test_predict_returns_a_normalised_distribution_on_the_shared_grid_and_health_is_serving(server):
    channel, stub = _stub(server.port)
    with channel:
        r = stub.Predict(predictor_pb2.PredictRequest(request_id="a", model="m", prompt="Write a long essay about rivers."))
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="sagesched.v1.Predictor"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert r.request_id == "a" and r.source == "model"
    assert (r.distribution.grid.num_bins, r.distribution.grid.max_length) == (64, 32768)
    assert abs(sum(r.distribution.probs) - 1.0) < 1e-4
    assert 1 <= r.p50 <= r.p90 and r.mean > 0


def test_batch_answers_each_request_in_order_and_respects_max_tokens(server):
    channel, stub = _stub(server.port)
    reqs = [predictor_pb2.PredictRequest(request_id=f"r{i}", model="m", prompt=f"question {i}?") for i in range(5)]
    reqs.append(predictor_pb2.PredictRequest(request_id="capped", model="m", prompt="Write a novel.",
                                             params=common_pb2.RequestParams(max_tokens=50)))
    with channel:
        resp = stub.PredictBatch(predictor_pb2.PredictBatchRequest(requests=reqs))
    assert [r.request_id for r in resp.responses] == [r.request_id for r in reqs]
    capped = LengthDistribution(np.array(resp.responses[-1].distribution.probs))
    assert capped.cdf(50 + 10) > 0.999  # nothing meaningfully beyond the bin holding 50


async def test_reports_move_predictions_for_similar_prompts_toward_observed_lengths(server):
    prompt = "List three prime numbers."
    async with PredictorClient(f"127.0.0.1:{server.port}", fallback=lambda q: LengthDistribution.uniform(),
                               settings=ClientSettings(deadline_s=5.0, cache_size=0)) as client:
        before = (await client.predict(query(prompt))).distribution
        accepted = await client.report([CompletionRecord(query(prompt + f" #{i}"), 3000) for i in range(200)])
        after = await client.predict(query(prompt))
    assert accepted == 200
    assert after.source in ("blend", "history")
    assert after.distribution.quantile(0.5) > 2 * before.quantile(0.5)
    assert server.metrics.reports._value.get() == 200
    assert server.metrics.history_size._value.get() == 200


async def test_calibration_metrics_count_reported_lengths_inside_predicted_intervals(server):
    async with PredictorClient(f"127.0.0.1:{server.port}", fallback=lambda q: LengthDistribution.uniform(),
                               settings=ClientSettings(deadline_s=5.0)) as client:
        pred = await client.predict(query("hello there", rid="x1"))
        median = int(pred.distribution.quantile(0.5))
        await client.report([CompletionRecord(query("hello there", rid="x1"), median)])
    assert server.metrics.interval_checks._value.get() == 1
    assert server.metrics.coverage.labels("0.5")._value.get() == 1.0


async def test_client_micro_batches_concurrent_calls_into_one_rpc_and_caches_repeats(server):
    settings = ClientSettings(deadline_s=5.0, max_wait_s=0.05, max_batch=64)
    async with PredictorClient(f"127.0.0.1:{server.port}", fallback=lambda q: LengthDistribution.uniform(),
                               settings=settings) as client:
        preds = await client.predict_many([query(f"prompt number {i}") for i in range(20)])
        assert client.rpc_batches == 1 and len(preds) == 20
        again = await client.predict(query("prompt number 3"))
    assert client.cache_hits == 1 and again is preds[3]
    assert client.fallbacks == 0
