"""`sagesched predictor serve|train|eval|export` and `sagesched bench predictor`."""
from __future__ import annotations

import argparse
from pathlib import Path

from sagesched.predictor.config import DEFAULT_CHECKPOINT


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
    ev.add_argument("--output", type=Path, default=None, help="write the markdown table here")
    ev.add_argument("--compare-content", action="store_true", help="also hashed words vs MiniLM")
    ev.set_defaults(func=_eval)

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

    from sagesched.predictor.config import PredictorSettings
    from sagesched.predictor.metrics import PredictorMetrics
    from sagesched.predictor.server import start_server

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)  # latency: many small batches, not one big matmul
    settings = PredictorSettings(checkpoint=args.checkpoint, checkpoint_dir=args.checkpoint_dir,
                                 history_key=args.history_key)
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
    import torch

    from sagesched.predictor.checkpoint import load_checkpoint
    from sagesched.predictor.data import load_splits
    from sagesched.predictor.evaluation import TABLE_HEADER, evaluate, format_row

    torch.set_num_threads(2)
    net, features, _, _ = load_checkpoint(args.checkpoint)
    splits = load_splits(args.seed)
    print(TABLE_HEADER)
    rows = evaluate(net, features, splits)
    lines = [TABLE_HEADER, *(format_row(r) for r in rows)]
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
