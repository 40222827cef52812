"""Asyncio client for the router: micro-batching, deadline, cache, and a fallback that never hangs.

Why micro-batching: one PredictBatch of 32 costs about as much server time as a few single calls,
so requests arriving within ~1 ms share one RPC. Why a fallback: the router must dispatch even if
the predictor is down or slow, so every call resolves by its deadline — with the server's answer,
or with the router's own estimator (e.g. its per-model history) — and fallbacks are counted.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from sagesched.distribution import LengthDistribution, grid
from sagesched.predictor.features import HEAD_CHARS, TAIL_CHARS
from sagesched.predictor.types import CompletionRecord, Prediction, PredictQuery
from sagesched.v1 import common_pb2, predictor_pb2, predictor_pb2_grpc

Fallback = Callable[[PredictQuery], LengthDistribution]

# gRPC's default reconnect backoff grows to 120 s: a predictor that restarts would be ignored (every
# call falling back) for up to two minutes. Capped at 1 s, the router uses it again within a second.
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                     ("grpc.max_reconnect_backoff_ms", 1000)]


@dataclass(frozen=True)
class ClientSettings:
    deadline_s: float = 0.010  # per predict call, queueing included
    max_batch: int = 32
    max_wait_s: float = 0.001  # how long the first request of a batch waits for company
    cache_size: int = 4096
    report_timeout_s: float = 1.0


def _query_to_proto(q: PredictQuery) -> predictor_pb2.PredictRequest:
    params = common_pb2.RequestParams(max_tokens=q.max_tokens, stop=list(q.stop))
    if q.temperature is not None:
        params.temperature = q.temperature
    return predictor_pb2.PredictRequest(request_id=q.request_id, model=q.model, prompt=q.prompt,
                                        prompt_tokens=q.prompt_tokens, params=params)


def _cache_key(q: PredictQuery) -> tuple:
    """What the prediction depends on (bounded, like the features: hashing a 1 MB prompt per call
    would defeat the point of a cache)."""
    text = q.prompt if len(q.prompt) <= HEAD_CHARS + TAIL_CHARS else q.prompt[:HEAD_CHARS] + q.prompt[-TAIL_CHARS:]
    digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
    return (q.model, digest, len(q.prompt), q.prompt_tokens, q.max_tokens, q.temperature, q.stop)


def _prediction_from_proto(r: predictor_pb2.PredictResponse) -> Prediction:
    g = grid(r.distribution.grid.num_bins, r.distribution.grid.max_length)
    return Prediction(LengthDistribution(np.asarray(r.distribution.probs, dtype=np.float64), g), r.source)


class PredictorClient:
    """`await client.predict(query)` → Prediction (source "fallback" when the server did not answer).

    Use `async with PredictorClient(target, fallback=...)` or call `close()`. Counters:
    `fallbacks`, `rpc_batches`, `cache_hits`.
    """

    def __init__(self, target: str, fallback: Fallback, settings: ClientSettings | None = None,
                 channel: grpc.aio.Channel | None = None) -> None:
        self.settings = settings or ClientSettings()
        self.fallback = fallback
        self._channel = channel or grpc.aio.insecure_channel(target, options=RECONNECT_OPTIONS)
        self._stub = predictor_pb2_grpc.PredictorStub(self._channel)
        self._pending: list[tuple[PredictQuery, asyncio.Future]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._cache: OrderedDict[tuple, Prediction] = OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        self.fallbacks = 0
        self.rpc_batches = 0
        self.cache_hits = 0

    async def __aenter__(self) -> "PredictorClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await self._channel.close()

    async def predict(self, query: PredictQuery) -> Prediction:
        key = _cache_key(query)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return hit
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._pending.append((query, fut))
        if len(self._pending) >= self.settings.max_batch:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(self.settings.max_wait_s, self._flush)
        try:
            pred = await asyncio.wait_for(asyncio.shield(fut), self.settings.deadline_s)
        except (asyncio.TimeoutError, grpc.RpcError, grpc.aio.AioRpcError):
            return self._fallback(query)
        self._cache[key] = pred
        if len(self._cache) > self.settings.cache_size:
            self._cache.popitem(last=False)
        return pred

    async def predict_many(self, queries: Sequence[PredictQuery]) -> list[Prediction]:
        return list(await asyncio.gather(*(self.predict(q) for q in queries)))

    def _fallback(self, query: PredictQuery) -> Prediction:
        self.fallbacks += 1
        return Prediction(self.fallback(query), "fallback")

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[PredictQuery, asyncio.Future]]) -> None:
        self.rpc_batches += 1
        request = predictor_pb2.PredictBatchRequest(requests=[_query_to_proto(q) for q, _ in batch])
        try:
            response = await self._stub.PredictBatch(request, timeout=self.settings.deadline_s)
            results = [_prediction_from_proto(r) for r in response.responses]
            if len(results) != len(batch):
                raise ValueError("predictor answered a different number of requests")
        except Exception as exc:  # noqa: BLE001 - every failure means: callers use the fallback
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(asyncio.TimeoutError(str(exc)))
                    fut.exception()  # mark retrieved: a caller that timed out never awaits it
            return
        for (_, fut), pred in zip(batch, results):
            if not fut.done():
                fut.set_result(pred)

    async def report(self, records: Sequence[CompletionRecord]) -> int:
        """Send finished requests (engine usage.completion_tokens); returns how many were accepted,
        0 if the predictor could not be reached (learning is best-effort, routing is not)."""
        completions = []
        for r in records:
            q = _query_to_proto(r.query)
            completions.append(predictor_pb2.Completion(
                request_id=q.request_id, model=q.model, prompt=q.prompt, prompt_tokens=q.prompt_tokens,
                params=q.params, output_tokens=r.output_tokens, finish_reason=r.finish_reason, pod=r.pod,
                completed_at_unix=r.completed_at))
        try:
            resp = await self._stub.Report(predictor_pb2.ReportRequest(completions=completions),
                                           timeout=self.settings.report_timeout_s)
        except grpc.RpcError:
            return 0
        return resp.accepted
