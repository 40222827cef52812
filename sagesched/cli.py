"""The one `sagesched` command line.

Each component owns its subcommands in its own `cli` module, which exposes
`register(subparsers)`; registering only declares arguments, so `sagesched --help` stays fast and
heavy imports (torch, grpc, kopf) happen inside the command that needs them.

This module is the composition root: the one place in `sagesched/` that imports the component folders
(router, bench, predictor, operator); everything else in `sagesched/` is the core they build on.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sagesched.bench import cli as bench_cli
from sagesched.bench import demo
from sagesched.emulator import cli as emulator_cli
from sagesched.operator import cli as operator_cli
from sagesched.predictor import cli as predictor_cli
from sagesched.router import cli as router_cli

# Order is the order of `sagesched --help`.
COMMANDS = (router_cli, demo, bench_cli, predictor_cli, emulator_cli, operator_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sagesched",
        description="Uncertainty-aware scheduler and router for LLM inference pods.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from sagesched.errors import UserError

    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return 130
    except UserError as exc:  # something the user can fix: one line, no traceback
        print(f"sagesched: error: {exc}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
