"""Every `sagesched` subcommand and flag is documented: the real argparse tree, walked recursively."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from sagesched.cli import build_parser


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str | None, argparse.ArgumentParser]]:
    """(name, help shown in the parent's listing, parser) of each direct subcommand."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.prog.rsplit(" ", 1)[-1] != name:  # an alias: the same parser again
                    continue
                out.append((name, listed.get(name), sub))
    return out


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """Every subcommand without a help line or description and every option without help, under
    `parser` (its own -h aside)."""
    missing = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}: no help")
    for name, listed, sub in _subcommands(parser):
        if not (listed or "").strip():
            missing.append(f"{sub.prog}: no help= (its line in `{parser.prog} --help`)")
        if not (sub.description or "").strip():
            missing.append(f"{sub.prog}: no description=")
        missing.extend(_undocumented(sub))
    return missing


def _all_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, _, sub in _subcommands(parser):
        out.append((*path, name))
        out.extend(_all_commands(sub, (*path, name)))
    return out


def test_every_subcommand_and_flag_has_help_text() -> None:
    parser = build_parser()
    assert len(_all_commands(parser)) >= 10  # the walk really reaches the components' subcommands
    missing = _undocumented(parser)
    assert not missing, f"{len(missing)} undocumented:\n" + "\n".join(missing)


def test_the_walk_finds_an_undocumented_flag_and_subcommand() -> None:
    """The check itself can fail: a parser with one bare flag and one bare subcommand."""
    parser = argparse.ArgumentParser(prog="x", description="d")
    parser.add_argument("--documented", help="yes")
    parser.add_argument("--bare")
    subs = parser.add_subparsers()
    sub = subs.add_parser("quiet")
    sub.add_argument("--also-bare", type=int, default=3)
    assert _undocumented(parser) == ["x --bare: no help", "x quiet: no help= (its line in `x --help`)",
                                     "x quiet: no description=", "x quiet --also-bare: no help"]


TOP_LEVEL = sorted(name for name, _, _ in _subcommands(build_parser()))


@pytest.mark.parametrize("command", [(), *[(name,) for name in TOP_LEVEL]], ids=lambda c: " ".join(c) or "sagesched")
def test_help_exits_zero_from_a_fresh_process(command: tuple[str, ...]) -> None:
    """`sagesched [COMMAND] --help` in a new interpreter: every component's parser builds on import."""
    done = subprocess.run([sys.executable, "-m", "sagesched", *command, "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: sagesched{''.join(' ' + c for c in command)}")
    assert done.stderr == ""
