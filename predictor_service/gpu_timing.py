"""Time the MiniLM embedder (and semantic history around it) on a GPU: `python -m sagesched.predictor.gpu_timing`.

Why: on the shared 2-core CPU, MiniLM costs milliseconds per prompt, over the predictor's budget; the
chart can put the predictor on a GPU (`predictor.gpu`), and this measures what that buys. Wall-clock
time per request (CUDA synchronised: the GPU's work is not CPU time), batches of 1 and 32 of real
ShareGPT prompts, fp32 and fp16, median and p10/p90/p99 over interleaved rounds; then the whole
semantic-history prediction (embedding on the GPU, exact search over a full 10,000-entry window
on the CPU). Prints a table and writes `<out>/minilm_gpu.json`.

Inputs (the GPU machine has no network): --model, a folder with the model's config.json,
tokenizer.json and weights; --prompts, a JSON list of prompt texts.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sagesched.distribution import grid
from sagesched.predictor.embedders import MiniLMEmbedder
from sagesched.predictor.semantic import SemanticHistory, SemanticParams
from sagesched.predictor.types import PredictQuery

BATCHES = (1, 32)


def _timed(fn, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda _: None)
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def _stats(per_request_s: list[float]) -> dict:
    p10, p50, p90, p99 = np.percentile(np.array(per_request_s) * 1e3, [10, 50, 90, 99]).tolist()
    return {"p10_ms": p10, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "samples": len(per_request_s)}


def run(model: Path, prompts: list[str], rounds: int, device_name: str) -> dict:
    device = torch.device(device_name)
    embedders = {dtype: MiniLMEmbedder(device_name, model, dtype) for dtype in ("float32", "float16")}
    history = SemanticHistory(embedders["float32"], grid(), SemanticParams())
    vectors = np.concatenate([embedders["float32"].embed(prompts[i:i + 256]) for i in range(0, len(prompts), 256)])
    window = np.resize(vectors, (SemanticParams().window, vectors.shape[1]))  # the prompts, repeated to fill it
    history.add("m", window, np.full(len(window), 200), np.full(len(window), 100))
    for e in embedders.values():
        e.embed(prompts[:64])  # warm-up: kernels, allocator
    cases = {f"embed {d}": (lambda chunk, e=e: e.embed(chunk)) for d, e in embedders.items()}
    cases["semantic-history predict (fp32 embed + 10k search)"] = lambda chunk: history.predict(
        [PredictQuery("m", t) for t in chunk])
    samples = {(name, b): [] for name in cases for b in BATCHES}
    for r in range(rounds):
        for b in BATCHES:
            chunk = prompts[(r * 33) % (len(prompts) - 33):][:b]
            for name, fn in cases.items():
                samples[(name, b)].append(_timed(lambda: fn(chunk), device) / b)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU)"
    return {"gpu": gpu, "torch": torch.__version__, "host": platform.node(),
            "rounds": rounds, "window": len(window),
            "rows": [{"case": name, "batch": b, **_stats(samples[(name, b)])} for name, b in samples]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # numpy's search on one thread, as `predictor serve` runs it
        result = run(args.model, json.loads(args.prompts.read_text()), args.rounds, args.device)
    print(f"{result['gpu']}, torch {result['torch']}")
    print("| case | batch | ms/request p50 [p10–p90] | p99 |\n|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['case']} | {r['batch']} | {r['p50_ms']:.3f} [{r['p10_ms']:.3f}–{r['p90_ms']:.3f}] | {r['p99_ms']:.3f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "minilm_gpu.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
