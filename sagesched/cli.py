"""The one `sagesched` command line.

Each component owns its subcommands in its own `cli` module, which exposes
`register(subparsers)`; registering only declares arguments, so `sagesched --help` stays fast and
heavy imports (torch, grpc, kopf) happen inside the command that needs them.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Order is the order of `sagesched --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "sagesched.router.cli",
    "sagesched.bench.cli",
    "sagesched.predictor.cli",
    "sagesched.emulator.cli",
    "sagesched.operator.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sagesched",
        description="Uncertainty-aware scheduler and router for LLM inference pods.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
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
