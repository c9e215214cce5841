"""Every example in the README and on the documentation site's pages runs as written
(issue 20: an example must do what it says).

The examples are the fenced code blocks of README.md and docs/*.md, found by Sybil:

- ``python`` blocks run as a script in a fresh interpreter, verbatim. It must exit 0
  with no traceback, and **every line on its stdout must be one the example printed
  itself** (a library nobody configured says nothing on stdout: finding 6). A block that
  defines ``test_*`` functions is a test file: it runs under pytest with no
  configuration of ours (no ``trio_mode``), and every test in it must pass (finding 5).
- ``sh`` blocks run one command at a time (a line, with its ``\\`` continuations) with
  ``bash -c``, in a scratch directory, this environment's commands first on PATH and a
  scratch HOME. A command must exit 0 (or the status an ``<!-- exits: N -->`` comment
  before its block gives), with no traceback, and never say that a target was ``NOT
  reached`` (finding 1: the README's ``--target-error 1e-4`` could never stop early).
  Commands with ``--target-error`` or ``--max-time`` must finish on their own (a
  ``--max-time`` run may also end with exit 1 and "no estimate within", what mcpi says when
  a machine too busy to start its workers completes no chunk in that time); any other
  still running after ``BUDGET_S`` (``--points 1e13``, long benchmarks) gets SIGINT and
  must then stop with 130 and no traceback, having started and run that long as it
  should. A command whose program is not installed (``jq``) is not run, with a warning;
  under ``CI=true`` it fails (``.ci/run`` installs them).
- ``<!-- skip: next "why" -->`` (Sybil's) skips the next block, for what needs other
  machines (ssh hosts, a Slurm cluster, Kubernetes) or sets up a virtual environment.
  The reason must name the test file or ``.ci/run`` that runs those commands (or their
  options against a real sshd or Slurm), or the page fails. Other blocks (``text``,
  ``json``, output) are shown, not run.

Each document is one test, its blocks evaluated in order (a skip applies to the block
after it). The same command in several documents runs once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import unittest
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from slurm import in_ci
from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer
from sybil.parsers.myst import CodeBlockParser, SkipParser

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "protocol.md")]
"""docs/protocol.md only includes protocol.md, whose vectors tests/worker/test_golden.py checks."""

BUDGET_S = 20.0
"""How long a command that does not stop by itself runs before it gets SIGINT."""

TIMEOUT_S = 900.0
"""A command (or script) still running this long has hung: the test fails."""

BIN = str(Path(sys.executable).parent)
"""This environment's ``mcpi``, ``mcpi-worker`` and ``python``, first on PATH."""

MARK = "\x02"
"""Prefixed by the harness to each stdout line the example's own ``print`` wrote (not a
character ``str.splitlines`` splits on, as it does on \\x1e)."""

PROLOGUE = """\
import builtins, io, runpy, sys
SCRIPT, MARK = sys.argv[1], sys.argv[2]
_print = builtins.print

def print(*args, **kwargs):
    # Lines the example itself prints to stdout get MARK; anything else on stdout
    # (a library's log line) is left unmarked for the test to find.
    if sys._getframe(1).f_code.co_filename != SCRIPT or kwargs.get("file") not in (None, sys.stdout):
        return _print(*args, **kwargs)
    text = io.StringIO()
    _print(*args, **{**kwargs, "file": text})
    for line in text.getvalue().splitlines(keepends=True):
        sys.stdout.write(MARK + line)
    sys.stdout.flush()

builtins.print = print
sys.argv = [SCRIPT]
runpy.run_path(SCRIPT, run_name="__main__")
"""


@dataclass(frozen=True)
class CommandResult:
    """How one example's command ran: exit status, output, and whether its budget ran
    out (then it was sent SIGINT)."""

    status: int
    stdout: str
    stderr: str
    interrupted: bool


_RAN: dict[str, CommandResult] = {}
"""Commands already run in this session, by their text (the README's tour repeats
commands of the pages)."""


def _environment(scratch: Path) -> dict[str, str]:
    home = scratch / "home"
    (home / ".config" / "fish" / "completions").mkdir(parents=True, exist_ok=True)  # as fish's install has it
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(home)}


def _run(argv: list[str], scratch: Path, budget_s: float | None) -> CommandResult:
    """Run ``argv`` in its own session; past ``budget_s``, SIGINT (``_interrupt``)."""
    process = subprocess.Popen(
        argv, cwd=scratch, env=_environment(scratch), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    interrupted = False
    try:
        stdout, stderr = process.communicate(timeout=budget_s if budget_s is not None else TIMEOUT_S)
    except subprocess.TimeoutExpired:
        if budget_s is None:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"{shlex.join(argv)} did not finish within {TIMEOUT_S:.0f} s:\n{stderr[-3000:]}")
        interrupted = True
        _interrupt(process.pid)
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"{shlex.join(argv)} did not stop within 60 s of SIGINT:\n{stderr[-3000:]}")
    return CommandResult(process.returncode, stdout, stderr, interrupted)


def _interrupt(pid: int) -> None:
    """SIGINT to the command: the process ``bash -c`` became (it execs a lone command), or
    each process of the pipeline it runs. Not to the whole process group: the processes
    those commands start themselves (an executor's forked workers) are theirs to stop,
    as with ``kill -INT``. A terminal's Ctrl-C, which reaches the whole foreground group,
    is tests/cli/test_cli_terminal.py's and tests/cli/test_cli_ends.py's to check."""
    try:
        leader = psutil.Process(pid)
        targets = leader.children() if leader.name() == "bash" else [leader]
    except psutil.NoSuchProcess:
        return  # it has just ended by itself
    for target in targets:
        with contextlib.suppress(psutil.NoSuchProcess):
            target.send_signal(signal.SIGINT)


def _commands(source: str) -> Iterator[str]:
    """The block's commands: each line with its continuations; comment lines dropped."""
    for command in re.sub(r"\\\n", " ", source).splitlines():
        if command.strip() and not command.lstrip().startswith("#"):
            yield command


def _programs(command: str) -> Iterable[str]:
    """The program of each part of a pipeline or list (``a | b && c``)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    at_start = True
    for word in words:
        if at_start and "=" not in word:
            yield word
        at_start = word in {"|", "||", "&&", ";", "&"}


def _scratch(example: Example) -> Path:
    scratch: Path = example.namespace["scratch"]
    (scratch / "docs").mkdir(exist_ok=True)  # the pictures' commands write docs/*.png, as in a clone
    return scratch


def run_shell(example: Example) -> None:
    expected = example.namespace.pop("exit_status", 0)
    scratch = _scratch(example)
    for command in _commands(str(example.parsed)):
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        missing = [program for program in _programs(command) if shutil.which(program, path=path) is None]
        if missing:
            where = f"{example.path}:{example.line}"
            if in_ci():  # .ci/run installs every program the examples use
                pytest.fail(f"{where}: {', '.join(missing)} not installed: {command}")
            warnings.warn(f"{where}: not run, {', '.join(missing)} not installed: {command}", stacklevel=1)
            continue
        outcome = _RAN.get(command)
        if outcome is None:
            stops_by_itself = "--target-error" in command or "--max-time" in command
            outcome = _RAN[command] = _run(["bash", "-c", command], scratch, None if stops_by_itself else BUDGET_S)
        said = (
            f"{example.path}:{example.line}: {command.strip()}\n"
            f"stdout:\n{outcome.stdout[-3000:]}\nstderr:\n{outcome.stderr[-3000:]}"
        )
        if outcome.interrupted:
            assert outcome.status == 130, f"exit {outcome.status} after SIGINT (130 expected): {said}"
        elif "--max-time" in command and outcome.status == 1 and "no estimate within" in outcome.stderr:
            pass  # a machine too busy to start workers and finish one chunk in time: said plainly
        else:
            assert outcome.status == expected, f"exit {outcome.status}, not {expected}: {said}"
        assert "Traceback" not in outcome.stderr, said
        assert "NOT reached" not in outcome.stdout + outcome.stderr, f"the example does not do what it says: {said}"


def run_python(example: Example) -> None:
    source = str(example.parsed)
    scratch = _scratch(example)
    if re.search(r"^(async )?def test_", source, re.MULTILINE):
        _run_test_file(example, source, scratch)
        return
    script = scratch / f"example_line_{example.line}.py"
    script.write_text(source, encoding="utf-8")
    outcome = _run([sys.executable, "-c", PROLOGUE, str(script), MARK], scratch, None)
    said = f"{example.path}:{example.line}\nstdout:\n{outcome.stdout[-3000:]}\nstderr:\n{outcome.stderr[-3000:]}"
    assert outcome.status == 0 and "Traceback" not in outcome.stderr, said
    foreign = [line for line in outcome.stdout.splitlines() if not line.startswith(MARK)]
    assert foreign == [], f"lines on stdout that the example did not print: {said}"


def _run_test_file(example: Example, source: str, scratch: Path) -> None:
    """A test file, run by pytest with an empty configuration: nothing of ours (no
    ``trio_mode``, no conftest) that a reader's project would not have."""
    project = scratch / f"test_project_line_{example.line}"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (project / "test_example.py").write_text(source, encoding="utf-8")
    outcome = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"], project, None)
    said = f"{example.path}:{example.line}\n{outcome.stdout[-3000:]}\n{outcome.stderr[-3000:]}"
    tests = len(re.findall(r"^(?:async )?def test_", source, re.MULTILINE))
    assert outcome.status == 0, said
    assert re.search(rf"^{tests} passed in ", outcome.stdout, re.MULTILINE), said


class ExitStatusParser:
    """``<!-- exits: N -->``: the commands of the next ``sh`` block exit with N."""

    def __init__(self) -> None:
        self.lexer = DirectiveInHTMLCommentLexer(directive="exits", arguments=r"\d+")

    def __call__(self, document: Document) -> Iterable[Region]:
        for lexed in self.lexer(document):
            yield Region(lexed.start, lexed.end, int(lexed.lexemes["arguments"]), self.evaluate)

    @staticmethod
    def evaluate(example: Example) -> None:
        example.namespace["exit_status"] = example.parsed


SYBIL = Sybil(
    parsers=[
        SkipParser(),
        ExitStatusParser(),
        CodeBlockParser("python", run_python),
        CodeBlockParser("sh", run_shell),
    ]
)


@pytest.mark.parametrize("path", DOCUMENTS, ids=[str(p.relative_to(ROOT)) for p in DOCUMENTS])
def test_every_example_runs_as_written(path: Path, tmp_path: Path) -> None:
    document = SYBIL.parse(path)
    document.namespace["scratch"] = tmp_path
    undelegated: list[str] = []
    for example in document:
        try:
            example.evaluate()
        except unittest.SkipTest as skip:
            if not _names_what_runs_it(str(skip)):
                undelegated.append(f"line {example.line}: {skip}")
    assert undelegated == [], f"{path.relative_to(ROOT)}: examples neither run here nor by a test they name"


DELEGATE = re.compile(r"(?:tests|benchmarks)/[\w./-]+\.py|\.ci/run")
"""Where a skipped example's reason says its commands are run: a test file, or CI's script."""


def _names_what_runs_it(reason: str) -> bool:
    """Whether ``reason`` (a ``skip`` comment's) names at least one test file or
    ``.ci/run`` that runs the example's commands (or these options, against the real
    service), every one of them present. An example that needs other machines is not
    left unrun: the page says which test runs it, and this holds the page to it. So a
    page is never reported as skipped; it passes when each example ran or names what
    runs it, and fails otherwise."""
    named = DELEGATE.findall(reason)
    return bool(named) and all((ROOT / name).exists() for name in named)


def _evaluators(path: Path) -> list[str]:
    return [getattr(example.region.evaluator, "__name__", "") for example in SYBIL.parse(path)]


def test_the_examples_are_found() -> None:
    """The collector sees the blocks it is meant to run: a change of Sybil's or of the
    pages' fences must not let the test above pass by running nothing."""
    assert _evaluators(ROOT / "docs" / "embedding.md").count("run_python") == 1
    assert _evaluators(ROOT / "docs" / "faults.md").count("run_python") == 1
    assert _evaluators(ROOT / "docs" / "estimate.md").count("run_shell") >= 1
    assert _evaluators(ROOT / "README.md").count("run_python") == 1
