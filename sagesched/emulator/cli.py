"""`sagesched emulate-pod`: serve N emulated vLLM pods on consecutive ports."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from sagesched.emulator.metrics import FLAVORS

    parser = subparsers.add_parser(
        "emulate-pod", help="vLLM-compatible pod emulator driven by the engine model",
        description="Serve N emulated vLLM (or SGLang) pods on consecutive ports: the OpenAI completions and "
                    "chat APIs with streaming, /health, /v1/models and engine /metrics, with token timing from "
                    "the engine model and a step-time profile. Runs until interrupted.")
    parser.add_argument("--pods", type=int, default=1, help="pods in this process, on ports PORT..PORT+N-1")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port of the first pod (default %(default)s)")
    parser.add_argument("--model", default="llama-3-8b", help="served model name")
    parser.add_argument("--profile", default=None, help="engine profile name or JSON path")
    parser.add_argument("--scheduling", choices=("fcfs", "priority"), default="fcfs",
                        help="engine queue order, as vLLM's --scheduling-policy (default %(default)s)")
    parser.add_argument("--max-queue", type=int, default=1024, help="waiting requests before answering 429")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the first pod's engine; pod i uses SEED + i (default %(default)s)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="wall seconds per emulated second")
    parser.add_argument("--metrics-flavor", choices=tuple(FLAVORS), default="vllm",
                        help="metric names /metrics exports: vLLM's or SGLang's (default %(default)s)")
    parser.add_argument("--output-median", type=float, default=256.0, help="median output tokens (lognormal)")
    parser.add_argument("--output-sigma", type=float, default=1.0, help="lognormal sigma of output tokens")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from sagesched.emulator.pod import PodConfig

    base = PodConfig()
    return PodConfig(
        model=args.model, profile=args.profile or base.profile, scheduling=args.scheduling,
        max_queue=args.max_queue, seed=args.seed, time_scale=args.time_scale,
        metrics_flavor=args.metrics_flavor, output_median=args.output_median,
        output_sigma=args.output_sigma, host=args.host, port=args.port,
    )


def run(args: argparse.Namespace) -> int:
    import asyncio

    from sagesched.emulator.pod import start_pods

    async def serve() -> None:
        pods = await start_pods(args.pods, config_from_args(args))
        for pod in pods:
            print(f"emulated pod serving {pod.config.model} at {pod.base_url}", flush=True)
        await asyncio.Event().wait()  # until interrupted

    try:
        import uvloop  # a faster event loop where it exists: more emulated tokens per core
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())
    return 0
