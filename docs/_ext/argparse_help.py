"""The ``argparse-help`` directive: a command's ``--help``, taken from its parser.

The CLI reference is generated from the very ``argparse`` parsers the commands run
with, so it cannot drift from them: for the parser a factory returns, and for each of
its subcommands in turn, one section titled with the command (``mcpi estimate``) holding
exactly what ``--help`` prints.

Why not sphinx-argparse: it re-reads every description, epilog and help string as
reStructuredText, while mcpi's are plain text laid out for a terminal
(``RawDescriptionHelpFormatter``: example columns, ``[*N]``, indented lists), which
reStructuredText misreads (warnings, mangled examples). The ``--help`` text, shown as
it is, is what a user sees.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_id

HELP_WIDTH = 88
"""Columns the help is wrapped to (argparse reads ``COLUMNS``): a page, not a terminal."""


def _commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser, then every subcommand's parser, depth first, in --help order."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from _commands(child)


def _help_of(parser: argparse.ArgumentParser) -> str:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)
    try:
        return parser.format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


class ArgparseHelp(SphinxDirective):
    """``argparse-help`` with ``:module:`` and ``:func:``: the factory of the parser."""

    has_content = False
    option_spec: ClassVar[dict[str, Callable[[str], Any]]] = {
        "module": directives.unchanged_required,
        "func": directives.unchanged_required,
    }

    def run(self) -> list[nodes.Node]:
        factory = getattr(importlib.import_module(self.options["module"]), self.options["func"])
        sections: list[nodes.Node] = []
        for parser in _commands(factory()):
            section = nodes.section(ids=[make_id(self.env, self.state.document, "cli", parser.prog)])
            section += nodes.title(parser.prog, "", nodes.literal(parser.prog, parser.prog))
            block = nodes.literal_block(text=_help_of(parser).rstrip())
            block["language"] = "text"
            section += block
            sections.append(section)
        return sections


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("argparse-help", ArgparseHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
