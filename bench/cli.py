"""`sagesched bench <what>`: every benchmark in one group.

Each benchmark module exposes `register_bench(subparsers)`; list it in BENCHES.
"""
from __future__ import annotations

import argparse

from sagesched.bench import decisions, gateway, live, preemption, standard
from sagesched.emulator import bench as emulator_bench
from sagesched.operator import bench as operator_bench
from sagesched.predictor import cli as predictor_cli
from sagesched.router.gateway import bench as gateway_bench
from sagesched.simulator import cli as simulator_cli

BENCHES = (emulator_bench, predictor_cli, simulator_cli, standard, live, decisions, preemption, operator_bench,
           gateway_bench, gateway)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: simulator, live replay, emulator, router overhead",
                                   description="Benchmarks of every component; `sagesched bench WHAT --help` "
                                               "describes each.")
    bench = parser.add_subparsers(dest="bench", metavar="WHAT", required=True)
    for module in BENCHES:
        module.register_bench(bench)
