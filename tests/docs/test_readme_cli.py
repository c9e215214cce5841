"""The documentation (the README and the site's pages, docs/*.md) and the program say
the same: every option documented exists and every option that exists is documented,
every ``--json`` field (read from real output, so the check stays true as fields are
added) is named, and the exit codes and environment variables match the code."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from command_line import mcpi
from documentation import DOCS, json_keys

from mcpi_coordinator.arguments import ENVIRONMENT
from mcpi_coordinator.cli.exit_codes import McpiExitCode
from mcpi_coordinator.cli.main import build_parser
from mcpi_worker.main import build_parser as build_worker_parser

EVERYWHERE = {"-h", "--help", "--version"}
"""Said once for every command: 'Every command also takes -h/--help and --version'."""


def _commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield parser
    for action in subcommands:
        for child in action.choices.values():
            yield from _commands(child)


PARSERS = {p.prog: p for p in [*_commands(build_parser()), build_worker_parser()]}


def existing_options(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
    } - EVERYWHERE


def documented_options(prog: str) -> set[str] | None:
    """The options in the documentation's table headed ``| `PROG` option |``, or None."""
    lines = DOCS.splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith(f"| `{prog}` option |")), None)
    if header is None:
        return None
    options: set[str] = set()
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        first_cell = line.split(" | ")[0]
        options |= set(re.findall(r"`(--?[A-Za-z][\w-]*)", first_cell))
    return options


@pytest.mark.parametrize("prog", [prog for prog, p in PARSERS.items() if existing_options(p)])
def test_every_option_is_documented_and_every_documented_option_exists(prog: str) -> None:
    documented = documented_options(prog)
    assert documented is not None, f"the docs have no '| `{prog}` option |' table"
    existing = existing_options(PARSERS[prog])
    assert existing - documented == set(), f"{prog}: options missing from the docs"
    assert documented - existing == set(), f"{prog}: the docs document options that do not exist"


def test_every_command_is_in_the_readme() -> None:
    for prog in PARSERS:
        assert f"`{prog}" in DOCS or f"{prog} " in DOCS, prog


def _json_of(*args: str) -> dict[str, Any]:
    run = mcpi(*args, "--json", timeout=180)
    assert run.returncode == 0, run.stderr
    document: dict[str, Any] = json.loads(run.stdout)
    return document


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ("estimate", "-n", "3000", "--chunk-size", "1000", "-w", "2", "--max-time", "60"),
        ("estimate", "-n", "1e13", "--chunk-size", "1e4", "-w", "1", "--target-error", "1e-2"),  # early-stop fields
        ("bench", "approaches", "-n", "2000", "--chunk-size", "1000", "-w", "1", "-r", "1", "--only", "sequential"),
        ("bench", "overhead", "-n", "10", "-w", "1"),
    ],
    ids=["estimate", "estimate-stopped", "bench-approaches", "bench-overhead"],
)
def test_every_json_field_is_documented(args: tuple[str, ...], tmp_path: Path) -> None:
    fields = set(json_keys(_json_of(*args)))
    missing = {field for field in fields if f"`{field}`" not in DOCS and f'"{field}"' not in DOCS}
    assert missing == set(), f"{' '.join(args)} --json: fields the docs do not name"


@pytest.mark.slow
def test_every_scatter_json_field_is_documented(tmp_path: Path) -> None:
    fields = set(json_keys(_json_of("scatter", "-n", "100", "-o", str(tmp_path / "q.png"))))
    assert {f for f in fields if f"`{f}`" not in DOCS} == set()


def test_the_exit_codes_table_is_the_code() -> None:
    table = DOCS[DOCS.index("**Exit codes** (every command):") :]
    table = table[: table.index("\n\n", table.index("| code |"))]
    documented = {int(code) for code in re.findall(r"^\| +(\d+) \|", table, re.MULTILINE)}
    assert documented == {int(code) for code in McpiExitCode}


def test_every_environment_variable_is_documented() -> None:
    for variable, option in ENVIRONMENT.items():
        assert f"| `{variable}` | `{option}`" in DOCS, variable
    assert "| `NO_COLOR` |" in DOCS


def test_every_install_into_the_readme_venv_is_editable() -> None:
    """The README's commands share one ``.venv`` and a user runs them in order. A plain
    ``pip install .`` followed by ``pip install -e .`` there breaks it: the first run
    writes the compiled kernels' caches into ``site-packages/mcpi_worker``, pip's
    uninstall leaves them, and that directory, a package without ``__init__.py``, then
    hides the clone's ``mcpi_worker`` (every worker dies on an ImportError). So every
    install the README and Getting started give into ``.venv`` is editable."""
    root = Path(__file__).resolve().parents[2]
    for page in (root / "README.md", root / "docs" / "getting-started.md"):
        installs = re.findall(r"\.venv/bin/pip install ([^&\n]*)", page.read_text(encoding="utf-8"))
        assert installs, page
        for arguments in installs:
            assert "-e" in arguments.split(), (page.name, arguments)
