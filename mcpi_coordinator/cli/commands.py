"""The commands of ``mcpi``: for each, the module that builds its parser and the one line
``mcpi --help`` lists for it.

A command's module is imported only when its own parser is needed: the command being
run, completed by the shell or asked for its help. ``mcpi --help``, ``mcpi --version``
and a mistyped command name build the others as stubs from these lines, so they load
none of the commands (``benchmarks/cli.py`` measures it). Each module's ``register``
takes its summary from here, so a stub and the full parser cannot say different things.
(Plain tuples: ``dataclasses`` alone takes longer to import than this whole module's job.)
"""

from __future__ import annotations

from typing import Final

COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "estimate": ("estimate_parser", "estimate pi on a pool of worker processes"),
    "combine": ("combine", "add up the --part outputs of one run into its estimate"),
    "scatter": ("scatter", "draw the quadrant figure (PNG) or its animation (GIF)"),
    "bench": ("bench", "compare the ways to spread CPU work over processes"),
    "completion": ("completion", "print shell code that completes mcpi's commands and options (bash, zsh, fish)"),
}
"""Name → (its module under ``mcpi_coordinator.cli``, whose ``register(subparsers)`` adds
it; its summary), in ``mcpi --help`` order."""


def summary(name: str) -> str:
    return COMMANDS[name][1]
