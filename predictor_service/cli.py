"""`sagesched predictor serve|train|eval|warm-start|export` and `sagesched bench predictor`."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from sagesched.predictor.config import DEFAULT_CHECKPOINT, MODES, PredictorSettings
from sagesched.predictor.embedders import EMBEDDERS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predictor", help="output-length predictor: serve, train, eval, export",
                                   description="The output-length predictor: serve it over gRPC, train its network "
                                               "on ShareGPT, evaluate it against baselines, or export predictions "
                                               "for the simulator.")
    sub = parser.add_subparsers(dest="predictor_command", metavar="ACTION", required=True)

    serve = sub.add_parser("serve", help="run the gRPC Predictor service",
                           description="Serve sagesched.v1.Predictor over gRPC: length distributions for "
                                       "queued requests, learning online from the completions routers report; "
                                       "Prometheus metrics on their own port. Runs until interrupted.")
    serve.add_argument("--listen", default="0.0.0.0:50061", help="gRPC listen address HOST:PORT (default %(default)s)")
    serve.add_argument("--metrics-port", type=int, default=9461, help="Prometheus /metrics port (default %(default)s)")
    serve.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                       help="network checkpoint to start from (default: the shipped %(default)s)")
    serve.add_argument("--checkpoint-dir", type=Path, default=None, help="persist online updates here")
    serve.add_argument("--history-key", choices=("embedding", "prompt_length"), default="embedding",
                       help="how past completions are matched to a new prompt: by the network's prompt embedding, "
                            "or by prompt length alone for traces without text (default %(default)s)")
    serve.add_argument("--workers", type=int, default=4, help="gRPC worker threads (default %(default)s)")
    _add_mode_arguments(serve)
    serve.set_defaults(func=_serve)

    train = sub.add_parser("train", help="train the network on the ShareGPT train split (needs [train])",
                           description="Train the length network on the ShareGPT train split and write a "
                                       "checkpoint (needs the [train] extra).")
    train.add_argument("--output", type=Path, default=DEFAULT_CHECKPOINT,
                       help="checkpoint file to write (default: the shipped %(default)s)")
    train.add_argument("--epochs", type=int, default=3, help="passes over the train split (default %(default)s)")
    train.add_argument("--seed", type=int, default=0,
                       help="seed of the train/val/test split and of training (default %(default)s)")
    train.add_argument("--max-train", type=int, default=None,
                       help="train on at most this many examples (default: the whole split)")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="test-split table vs baselines (needs [train])",
                        description="Score a checkpoint on the ShareGPT test split against baseline "
                                    "predictors and print a markdown table (needs the [train] extra).")
    ev.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                    help="checkpoint to evaluate (default: the shipped %(default)s)")
    ev.add_argument("--seed", type=int, default=0,
                    help="seed of the train/val/test split; use the one it was trained with (default %(default)s)")
    ev.add_argument("--output", type=Path, default=None,
                    help="write the markdown table here, and the figures as JSON beside it (same name, .json)")
    ev.add_argument("--embedders", default="hashed,minilm",
                    help="semantic-history embedders to compare, comma-separated (default %(default)s; "
                         "minilm embeds ~20k prompts once, minutes on a small CPU, then cached)")
    ev.add_argument("--test-limit", type=int, default=None,
                    help="score only the first N test requests (default: the whole split)")
    ev.add_argument("--compare-content", action="store_true", help="also hashed words vs MiniLM")
    ev.set_defaults(func=_eval)

    ws = sub.add_parser("warm-start", help="embed a ShareGPT slice for semantic history's cold start",
                        description="Embed the last N training turns of ShareGPT and write the file "
                                    "`predictor serve --warm-start` searches when live matches are few "
                                    "(needs the [train] extra).")
    ws.add_argument("--embedder", choices=EMBEDDERS, default="hashed", help="(default %(default)s)")
    ws.add_argument("--examples", type=int, default=10_000, help="training turns to embed (default %(default)s)")
    ws.add_argument("--output", type=Path, required=True, help=".npz file to write")
    ws.set_defaults(func=_warm_start)

    ex = sub.add_parser("export", help="(prompt, true, predicted distribution) rows for the simulator",
                        description="Write (prompt length, true output length, predicted distribution) rows of "
                                    "a ShareGPT split, which `sagesched bench sim --trace FILE` replays.")
    ex.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                    help="checkpoint that predicts (default: the shipped %(default)s)")
    ex.add_argument("--split", default="test", choices=("train", "val", "test"),
                    help="ShareGPT split to export (default %(default)s)")
    ex.add_argument("--limit", type=int, default=None, help="export at most this many rows (default: all)")
    ex.add_argument("--output", type=Path, required=True, help=".npz or .csv")
    ex.set_defaults(func=_export)


def _add_mode_arguments(serve: argparse.ArgumentParser) -> None:
    d = PredictorSettings()
    serve.add_argument("--mode", choices=MODES, default=d.mode,
                       help="network: our torch model + kNN history + drift; semantic-history: the paper's "
                            "lengths of similar past prompts; blend: both (default %(default)s)")
    serve.add_argument("--embedder", choices=EMBEDDERS, default=d.embedder,
                       help="prompt vectors for semantic history (default %(default)s)")
    serve.add_argument("--embedder-device", default=d.embedder_device,
                       help="torch device for the minilm embedder, e.g. cuda (default %(default)s)")
    serve.add_argument("--window", type=int, default=d.semantic.window,
                       help="completions kept per model for semantic search (default %(default)s)")
    serve.add_argument("--similarity-threshold", type=float, default=d.semantic.threshold,
                       help="cosine similarity that counts as a similar prompt (default %(default)s)")
    serve.add_argument("--min-matches", type=int, default=d.semantic.min_matches,
                       help="fewer live matches than this also search the warm start (default %(default)s)")
    serve.add_argument("--warm-start", type=Path, default=None,
                       help="file from `sagesched predictor warm-start`, embedded with the same --embedder")
    serve.add_argument("--redis-url", default=None,
                       help="share semantic-history windows with the other replicas through this Redis")


def _settings(args: argparse.Namespace) -> "PredictorSettings":
    semantic = replace(PredictorSettings().semantic, window=args.window, threshold=args.similarity_threshold,
                       min_matches=args.min_matches)
    return PredictorSettings(checkpoint=args.checkpoint, checkpoint_dir=args.checkpoint_dir,
                             history_key=args.history_key, mode=args.mode, embedder=args.embedder,
                             embedder_device=args.embedder_device, semantic=semantic,
                             warm_start=args.warm_start, redis_url=args.redis_url)


def register_bench(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("predictor", help="predictor latency (batch 1 / 32) and gRPC throughput",
                         description="Time the predictor in-process at batch sizes 1 and 32, and the gRPC "
                                     "service's throughput, on synthetic queries.")
    p.add_argument("--iterations", type=int, default=300, help="timed batches per measurement (default %(default)s)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="checkpoint to time (default: the shipped %(default)s)")
    p.add_argument("--output", type=Path, default=None,
                   help="also write the printed result lines to this file (default: print only)")
    p.set_defaults(func=_bench)


def _serve(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    import torch
    from prometheus_client import start_http_server

    from sagesched.predictor.metrics import PredictorMetrics
    from sagesched.predictor.server import start_server

    from threadpoolctl import threadpool_limits

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)  # latency: many small batches, not one big matmul
    threadpool_limits(1)  # likewise numpy's BLAS (semantic search): threads spinning on a busy CPU stall it
    settings = _settings(args)
    metrics = PredictorMetrics()
    start_http_server(args.metrics_port, registry=metrics.registry)
    running = start_server(settings, args.listen, args.workers, metrics)
    print(f"predictor listening on port {running.port}, metrics on :{args.metrics_port}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    running.stop()
    return 0


def _train(args: argparse.Namespace) -> int:
    from sagesched.predictor.training import run_train

    run_train(args.output, args.epochs, args.seed, args.max_train)
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json
    import sys

    import torch

    from sagesched.predictor.bench import search_backend_timing
    from sagesched.predictor.checkpoint import load_checkpoint
    from sagesched.predictor.comparison import TABLE_HEADER, compare_modes, format_row
    from sagesched.predictor.data import load_splits

    torch.set_num_threads(2)
    net, features, _, _ = load_checkpoint(args.checkpoint)
    splits = load_splits(args.seed)
    rows = compare_modes(net, features, splits, args.embedders.split(","), args.test_limit)
    search = search_backend_timing()
    lines = [TABLE_HEADER, *(format_row(r) for r in rows), "",
             "| exact search, 10k window | dim | batch | CPU ms/batch p50 [p10–p90] |", "|---|---|---|---|",
             *(f"| {s['backend']} | {s['dim']} | {s['batch']} | {s['p50_ms']:.3f} [{s['p10_ms']:.3f}–{s['p90_ms']:.3f}] |"
               for s in search)]
    print("\n".join(lines))
    if args.compare_content:
        from sagesched.predictor.content_compare import compare

        lines += ["", "| content signal (8k train / 2k test subset) | test NLL | Kendall τ | feature ms/prompt |",
                  "|---|---|---|---|"]
        for r in compare(splits, 8000, 2000, 3):
            lines.append(f"| {r['content']} | {r['test_nll']:.3f} | {r['kendall_tau']:.3f} | {r['feature_ms']:.3f} |")
            print(lines[-1])
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(lines) + "\n")
        figures = {"command": "sagesched " + " ".join(sys.argv[1:]), "modes": [r.to_dict() for r in rows],
                   "search_backends": search}
        args.output.with_suffix(".json").write_text(json.dumps(figures, indent=1) + "\n")
    return 0


def _warm_start(args: argparse.Namespace) -> int:
    from sagesched.predictor.data import load_splits
    from sagesched.predictor.embedders import make_embedder
    from sagesched.predictor.semantic import build_warm_start

    examples = load_splits()["train"][-args.examples:]
    warm = build_warm_start(make_embedder(args.embedder, cache=0), [e.prompt for e in examples],
                            [e.output_tokens for e in examples], [e.prompt_tokens for e in examples])
    print(f"wrote {len(examples)} {warm.embedder} vectors to {warm.save(args.output)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from sagesched.predictor.checkpoint import load_checkpoint
    from sagesched.predictor.core import Predictor
    from sagesched.predictor.data import load_splits
    from sagesched.predictor.evaluation import export_replay, replay_rows

    net, features, _, _ = load_checkpoint(args.checkpoint)
    examples = load_splits()[args.split][: args.limit]
    path = export_replay(replay_rows(Predictor(net, features=features), examples), args.output)
    print(f"wrote {len(examples)} rows to {path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from sagesched.predictor.bench import run_bench

    run_bench(args.checkpoint, args.iterations, args.output)
    return 0
