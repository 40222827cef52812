"""`sagesched bench <what>`: every benchmark in one group.

Each benchmark module exposes `register_bench(subparsers)`; list it in BENCH_MODULES.
"""
from __future__ import annotations

import argparse
import importlib

BENCH_MODULES: tuple[str, ...] = (
    "sagesched.emulator.bench",
    "sagesched.predictor.cli",
    "sagesched.simulator.cli",
    "sagesched.simulator.standard",
    "sagesched.bench.live",
    "sagesched.bench.decisions",
    "sagesched.bench.preemption",
    "sagesched.operator.bench",
    "sagesched.router.gateway.bench",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: simulator, live replay, emulator, router overhead",
                                   description="Benchmarks of every component; `sagesched bench WHAT --help` "
                                               "describes each.")
    bench = parser.add_subparsers(dest="bench", metavar="WHAT", required=True)
    for module_name in BENCH_MODULES:
        importlib.import_module(module_name).register_bench(bench)
