"""The predictor service down, restarted or slow: requests are still served (the history estimator
answers within the deadline), the fallback metric counts it, and the router uses the predictor
again by itself once it is back."""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace

import grpc
import openai
import pytest

from sagesched.predictor.config import PredictorSettings
from sagesched.predictor.server import RunningServer, start_server
from sagesched.v1 import predictor_pb2_grpc
from tests.conftest import free_port
from tests.reliability.conftest import MODEL

_prompts = itertools.count()


def fallbacks(router) -> float:
    """Every fallback the router counted (client fallback, deadline, error)."""
    registry = router.router.metrics.registry
    return sum(registry.get_sample_value("sagesched_predictor_fallbacks_total", {"reason": r}) or 0.0
               for r in ("client_fallback", "deadline", "error"))


async def complete(router) -> None:
    """One request with a prompt never seen before (the client caches predictions by prompt)."""
    client = openai.AsyncOpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=30)
    resp = await client.completions.create(model=MODEL, prompt=f"question {next(_prompts)}", max_tokens=2,
                                           extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 2


async def predicted_by_service(router, timeout: float = 30.0) -> int:
    """Send requests until one is answered without a fallback; how many it took."""
    deadline = time.monotonic() + timeout
    for attempt in itertools.count(1):
        before = fallbacks(router)
        await complete(router)
        if fallbacks(router) == before:
            return attempt
        assert time.monotonic() < deadline, "the router never used the predictor again"
    raise AssertionError("unreachable")


@pytest.fixture
def predictor_port(tmp_path) -> Iterator[tuple[int, list[RunningServer]]]:
    port = free_port()
    running: list[RunningServer] = []
    yield port, running
    for server in running:
        server.stop(grace=0)


def start_predictor(port: int, tmp_path) -> RunningServer:
    settings = replace(PredictorSettings(), checkpoint_dir=tmp_path / "ckpt", online_every=0)
    return start_server(settings, f"127.0.0.1:{port}")


async def test_predictor_down_falls_back_and_recovers_on_restart(pods_for_predictor, predictor_port, tmp_path,
                                                                  make_router):
    port, running = predictor_port
    running.append(start_predictor(port, tmp_path))
    router = await make_router([pods_for_predictor.url], predictor_address=f"127.0.0.1:{port}",
                               predictor_deadline_s=0.5)
    await predicted_by_service(router)

    running.pop().stop(grace=0)
    before = fallbacks(router)
    for _ in range(3):
        await complete(router)  # served all the same, by the history estimator
    assert fallbacks(router) >= before + 3

    running.append(start_predictor(port, tmp_path))  # same port: nothing to reconfigure
    await predicted_by_service(router)


class StalledPredictor(predictor_pb2_grpc.PredictorServicer):
    """Accepts every call and answers none within any sane deadline (a wedged predictor)."""

    def PredictBatch(self, request, context):
        time.sleep(5)
        context.abort(grpc.StatusCode.UNAVAILABLE, "too late")


async def test_slow_predictor_is_cut_off_at_the_deadline(pods_for_predictor, make_router):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    predictor_pb2_grpc.add_PredictorServicer_to_server(StalledPredictor(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        router = await make_router([pods_for_predictor.url], predictor_address=f"127.0.0.1:{port}",
                                   predictor_deadline_s=0.05)
        registry = router.router.metrics.registry

        def waited() -> tuple[float, float]:  # (predictions waited for, seconds waited in all)
            return (registry.get_sample_value("sagesched_predictor_latency_seconds_count") or 0.0,
                    registry.get_sample_value("sagesched_predictor_latency_seconds_sum") or 0.0)

        def late() -> float:  # fallbacks because the answer did not come in time (not errors)
            return sum(registry.get_sample_value("sagesched_predictor_fallbacks_total", {"reason": r}) or 0.0
                       for r in ("client_fallback", "deadline"))

        before, errors_before, (count_before, sum_before) = late(), fallbacks(router) - late(), waited()
        for _ in range(3):
            await complete(router)
        count, total = waited()
        assert count == count_before + 3  # the service was asked each time...
        assert late() == before + 3  # ...and each time the deadline, not an error, sent it to the fallback
        assert fallbacks(router) - late() == errors_before
        # Each wait is cut at 50 ms by the client and at 2 x 50 + 5 ms by the router's own bound: ~0.15 s
        # for three. 1.5 s leaves a loaded 2-core machine ample slack, yet a single wait on the 5 s stall
        # (or a tenth of it) fails.
        assert total - sum_before < 1.5
    finally:
        server.stop(0)


@pytest.fixture
def pods_for_predictor(pod_processes):
    return pod_processes()
