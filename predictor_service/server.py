"""gRPC Predictor service: a thin servicer over core.Predictor, plus health, reflection, metrics.

The servicer only translates protobufs ↔ domain objects (types.py) and calls the core; all logic
lives in the core so the simulator and benchmarks use exactly the same code without a server.
"""
from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sagesched.distribution import grid
from sagesched.predictor.checkpoint import FileCheckpointStore, load_checkpoint
from sagesched.predictor.config import PredictorSettings
from sagesched.predictor.core import Predictor, summarize
from sagesched.predictor.embedders import make_embedder
from sagesched.predictor.metrics import PredictorMetrics
from sagesched.predictor.online import OnlineLearner
from sagesched.predictor.semantic import SemanticHistory, WarmStart
from sagesched.predictor.shared_window import RedisWindowFeed
from sagesched.predictor.types import CompletionRecord, Prediction, PredictQuery
from sagesched.v1 import common_pb2, predictor_pb2, predictor_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = "sagesched.v1.Predictor"


def query_from_proto(m: predictor_pb2.PredictRequest | predictor_pb2.Completion) -> PredictQuery:
    params = m.params
    prompt_tokens = m.prompt_tokens or len(getattr(m, "prompt_token_ids", ()))
    return PredictQuery(
        model=m.model, prompt=m.prompt, prompt_tokens=prompt_tokens, max_tokens=params.max_tokens,
        temperature=params.temperature if params.HasField("temperature") else None,
        stop=tuple(params.stop), request_id=m.request_id)


def prediction_to_proto(request_id: str, p: Prediction) -> predictor_pb2.PredictResponse:
    d = p.distribution
    s = summarize(d.probs[None, :], d.grid, (0.5, 0.9))
    return predictor_pb2.PredictResponse(
        request_id=request_id,
        distribution=predictor_pb2.LengthDistribution(
            grid=common_pb2.LengthGrid(num_bins=d.grid.num_bins, max_length=d.grid.max_length), probs=d.probs),
        source=p.source, mean=float(s.mean[0]), p50=float(s.quantiles[0.5][0]), p90=float(s.quantiles[0.9][0]))


def completion_from_proto(c: predictor_pb2.Completion) -> CompletionRecord:
    return CompletionRecord(query_from_proto(c), c.output_tokens, c.finish_reason or "stop",
                            c.completed_at_unix, c.pod)


class PredictorServicer(predictor_pb2_grpc.PredictorServicer):
    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def Predict(self, request, context):
        return prediction_to_proto(request.request_id, self.predictor.predict(query_from_proto(request)))

    def PredictBatch(self, request, context):
        queries = [query_from_proto(r) for r in request.requests]
        preds = self.predictor.predict_batch(queries) if queries else []
        return predictor_pb2.PredictBatchResponse(
            responses=[prediction_to_proto(q.request_id, p) for q, p in zip(queries, preds)])

    def Report(self, request, context):
        accepted = self.predictor.report([completion_from_proto(c) for c in request.completions])
        return predictor_pb2.ReportResponse(accepted=accepted)


def build_semantic(settings: PredictorSettings) -> SemanticHistory | None:
    """The semantic history the mode needs (None for "network"), warm-started if configured."""
    if settings.mode == "network":
        return None
    embedder = make_embedder(settings.embedder, settings.embedder_device)
    warm = WarmStart.load(settings.warm_start) if settings.warm_start else None
    return SemanticHistory(embedder, grid(), settings.semantic, warm)


def build_predictor(settings: PredictorSettings, metrics: PredictorMetrics | None = None) -> Predictor:
    """Newest checkpoint in the store if any (with its history), else the configured one; the
    semantic-history mode needs no network and loads none."""
    store = FileCheckpointStore(settings.checkpoint_dir) if settings.checkpoint_dir else None
    path = (store.latest() if store else None) or settings.checkpoint
    net, features, history = None, None, None
    if settings.mode != "semantic-history" and path is not None and Path(path).exists():
        net, features, history, _ = load_checkpoint(Path(path))
        log.info("loaded predictor checkpoint %s", path)
    predictor = Predictor(net, settings, features, observer=metrics, semantic=build_semantic(settings))
    if history:
        predictor.load_history_state(history)
    return predictor


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    predictor: Predictor
    learner: OnlineLearner
    metrics: PredictorMetrics
    health: health.HealthServicer
    feed: RedisWindowFeed | None = None

    def stop(self, grace: float = 0.5) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.learner.stop()
        if self.feed is not None:
            self.feed.stop()


def start_server(settings: PredictorSettings, address: str = "127.0.0.1:0", workers: int = 4,
                 metrics: PredictorMetrics | None = None, predictor: Predictor | None = None) -> RunningServer:
    metrics = metrics or PredictorMetrics()
    predictor = predictor or build_predictor(settings, metrics)
    store = FileCheckpointStore(settings.checkpoint_dir) if settings.checkpoint_dir else None
    learner = OnlineLearner(predictor, store, on_update=metrics.on_model_update)
    feed = None
    if settings.redis_url and predictor.semantic is not None:
        feed = RedisWindowFeed(settings.redis_url, predictor.semantic).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    predictor_pb2_grpc.add_PredictorServicer_to_server(PredictorServicer(predictor), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    server.start()
    learner.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, predictor, learner, metrics, health_servicer, feed)
