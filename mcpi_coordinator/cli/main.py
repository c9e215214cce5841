"""The ``mcpi`` command: argument parsing, dispatch to a subcommand, exit codes.

Each subcommand lives in ``mcpi_coordinator/cli/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` (a function
``(argparse.Namespace) -> int`` returning the exit code). Adding a subcommand is one
module and one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from typing import Any, Final

from mcpi_coordinator.cli.exit_codes import ExitCode

COMMANDS: Final[tuple[str, ...]] = ("estimate", "scatter", "bench")
"""Subcommand modules under ``mcpi_coordinator.cli``, in --help order."""


class _Parser(argparse.ArgumentParser):
    """argparse with our exit code for usage errors and a one-line message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse takes "-1e9" for an option (it only knows "-5" and "-.5" as
        # numbers) and would say "expected one argument"; counts accept exponents,
        # so let the value through and have it refused as negative, which is the truth.
        self._negative_number_matcher = re.compile(r"^-(?=\.?\d)[\d_]*\.?\d*([eE][+-]?\d+)?$")

    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, not argparse's usage block: the reason is what a person (or a
        # script's log) needs, and --help is one command away.
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mcpi",
        description="Estimate pi by Monte Carlo on a persistent pool of worker processes.",
        epilog="Run 'mcpi COMMAND --help' for the options of one command.",
    )
    from mcpi_coordinator import __version__

    parser.add_argument("--version", action="version", version=f"mcpi {__version__}")
    subparsers = parser.add_subparsers(
        title="commands", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for name in COMMANDS:
        importlib.import_module(f"mcpi_coordinator.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
