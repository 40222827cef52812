"""Latency and throughput of the predictor on this CPU (`sagesched bench predictor`).

In-process: P50/P99 of Predictor.predict_batch at batch 1 and 32 (per request = batch time / size),
with a warm history of 4096 completions. Over gRPC: predictions/s through a real server on
loopback driven by the asyncio client with micro-batching.
"""
from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import numpy as np
import torch

from sagesched.distribution import LengthDistribution
from sagesched.predictor.checkpoint import load_checkpoint
from sagesched.predictor.config import PredictorSettings
from sagesched.predictor.core import Predictor
from sagesched.predictor.types import CompletionRecord, PredictQuery

IN_FLIGHT = 128
WORDS = ("explain write code python function summarize list story poem translate why how what table "
         "email essay short detailed steps example json sql error fix").split()


def synthetic_queries(n: int, seed: int = 0) -> list[PredictQuery]:
    """Prompts of realistic size (tens to thousands of words; some 100 KB) without needing data."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.choice((20, 80, 400, 3000, 20000))
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        out.append(PredictQuery(model="m", prompt=text, request_id=f"r{i}"))
    return out


def _percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def run_bench(checkpoint: Path, iterations: int, output: Path | None) -> dict:
    torch.set_num_threads(1)
    net, features, _, _ = load_checkpoint(checkpoint)
    settings = PredictorSettings(online_every=0)
    predictor = Predictor(net, settings, features)
    queries = synthetic_queries(4096 + 32 * iterations)
    rng = np.random.default_rng(0)
    predictor.report([CompletionRecord(q, int(rng.lognormal(5, 1)) + 1) for q in queries[:4096]])
    lines = []
    figures = {}
    for batch in (1, 32):
        samples = []
        for i in range(iterations):
            chunk = queries[4096 + i * batch: 4096 + (i + 1) * batch]
            start = time.perf_counter()
            predictor.predict_batch(chunk)
            samples.append((time.perf_counter() - start) / batch)
        p50, p99 = _percentiles(samples)
        figures[f"batch{batch}"] = (p50, p99)
        lines.append(f"in-process batch {batch:>2}: per request P50 {p50 * 1e3:.3f} ms, P99 {p99 * 1e3:.3f} ms")
        print(lines[-1], flush=True)
    rate = asyncio.run(_grpc_throughput(settings, queries[4096:4096 + 4000]))
    figures["grpc_predictions_per_s"] = rate
    lines.append(f"gRPC (loopback, asyncio client, micro-batches ≤32): {rate:.0f} predictions/s")
    print(lines[-1], flush=True)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("\n".join(lines) + "\n")
    return figures


async def _grpc_throughput(settings: PredictorSettings, queries: list[PredictQuery]) -> float:
    from sagesched.predictor.client import ClientSettings, PredictorClient
    from sagesched.predictor.server import start_server

    running = start_server(settings)
    try:
        client = PredictorClient(f"127.0.0.1:{running.port}", fallback=lambda q: LengthDistribution.uniform(),
                                 settings=ClientSettings(deadline_s=2.0, cache_size=0))
        async with client:
            await client.predict_many(queries[:64])  # warm the channel
            start = time.perf_counter()
            for i in range(0, len(queries), IN_FLIGHT):  # a router-like window, not 4000 at once
                await client.predict_many(queries[i:i + IN_FLIGHT])
            elapsed = time.perf_counter() - start
            if client.fallbacks:
                print(f"warning: {client.fallbacks} fallbacks during the throughput run")
    finally:
        running.stop()
    return len(queries) / elapsed


def search_backend_timing(window: int = 10_000, dims: tuple[int, ...] = (256, 384), rounds: int = 50,
                          threshold: float = 0.8) -> list[dict]:
    """CPU ms per batch to find every window entry with cosine ≥ threshold and histogram their
    lengths: our numpy matrix product (semantic.Window) vs FAISS IndexFlatIP.range_search, both
    exact, one BLAS/OpenMP thread (as served), batches of 1 and 32, interleaved. Needs faiss-cpu."""
    import faiss
    from threadpoolctl import threadpool_limits

    from sagesched.predictor.semantic import Window

    rng = np.random.default_rng(0)
    rows = []
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        for dim in dims:
            keys = rng.normal(size=(window, dim)).astype(np.float32)
            keys /= np.linalg.norm(keys, axis=1, keepdims=True)
            bins = rng.integers(0, 64, window)
            ours = Window(dim, window, 64)
            ours.add(keys, bins)
            index = faiss.IndexFlatIP(dim)
            index.add(keys)

            def faiss_hist(q: np.ndarray) -> np.ndarray:
                lims, _, ids = index.range_search(q, threshold)
                return np.stack([np.bincount(bins[ids[lims[i]:lims[i + 1]]], minlength=64) for i in range(len(q))])

            for batch in (1, 32):
                q = keys[:batch] + rng.normal(scale=0.02, size=(batch, dim)).astype(np.float32)
                q /= np.linalg.norm(q, axis=1, keepdims=True)
                backends = {"numpy": lambda: ours.matches(q, threshold), "faiss": lambda: faiss_hist(q)}
                samples: dict[str, list[float]] = {k: [] for k in backends}
                for _ in range(rounds):
                    for name, run in backends.items():
                        start = time.process_time()
                        run()
                        samples[name].append((time.process_time() - start) * 1e3)
                for name, s in samples.items():
                    p10, p50, p90 = np.percentile(s, [10, 50, 90]).tolist()
                    rows.append({"backend": name, "dim": dim, "window": window, "batch": batch,
                                 "p10_ms": p10, "p50_ms": p50, "p90_ms": p90})
    return rows
