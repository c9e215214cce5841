"""Ctrl-C and SIGTERM at each of the first moments of ``mcpi`` and ``mcpi-worker``, from the
first line of their way in (``cli.boot``, ``mcpi_worker.boot``) on: a sweep over the
imports each command makes as it starts, run as a user runs them (the console scripts).

A moment is the k-th import that begins once the way in has begun: a ``sitecustomize``
stops the process there (SIGSTOP, from the ``import`` audit event), the test sends the
signal and continues it. Each moment is an event of the command's own start, never a
guess of the clock, and the same on a quiet machine and a busy one.

Before: each way in imported ``signal`` (which builds its enums) before it held Ctrl-C
and SIGTERM (``mcpi``) or ignored Ctrl-C (``mcpi-worker``, stdin a pipe): a Ctrl-C at that
import printed Python's traceback, and a SIGTERM ended ``mcpi`` without its line and 143.

What comes before the way in (the interpreter's start, ``site`` and its ``.pth`` files,
the console script's lines, the packages' ``__init__``) is Python's: ``benchmarks/signals.py``
and docs/faults.md measure that window; no code of ours runs there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from command_line import CLEAN_ENV, PATIENT, until_stopped

from mcpi_coordinator.testing.processes import marked, wait_until_gone

MARK = "MCPI_TEST_START_SIGNALS_MARK"
BIN = Path(sys.executable).parent

STOP_AT_NTH_IMPORT = f"""
import os, sys  # not signal: the commands' imports of it are among the moments

_after = os.environ.pop("STOP_AFTER")  # this process only, not the workers it starts
_nth = int(os.environ.pop("STOP_AT"))
_seen = []


def _stop_at(event, args):
    if event == "import" and _after in sys.modules and len(_seen) < _nth:
        _seen.append(args[0])
        if len(_seen) == _nth:
            os.kill(os.getpid(), {int(signal.SIGSTOP)})


sys.addaudithook(_stop_at)
"""
"""A ``sitecustomize``: the process stops itself (SIGSTOP) as its ``STOP_AT``-th import
begins once module ``STOP_AFTER`` (the way in) has begun to run. It imports nothing the
interpreter has not loaded already, so that the commands' own imports stay theirs."""

MCPI_MOMENTS = [*range(1, 13), 16, 20, 30, 45]
"""Imports of ``mcpi estimate`` from ``cli.boot``'s first line: its own few, the command
line's (``argparse``, ``cli.main``, ``cli.signals``), the early workers' launch."""
WORKER_MOMENTS = list(range(1, 13))
"""Imports of ``mcpi-worker`` from ``boot``'s first line: its own, the backstop's
(``ctypes``), the start turn's, the command line's."""


def _stopped_at(argv: list[str], after: str, nth: int, hook: Path, mark: str) -> subprocess.Popen[bytes]:
    """``argv`` started in a session of its own and stopped at moment ``nth``."""
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(STOP_AT_NTH_IMPORT, encoding="utf-8")
    env = {**CLEAN_ENV, MARK: mark, "PYTHONPATH": str(hook), "STOP_AFTER": after, "STOP_AT": str(nth)}
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    if not until_stopped(process.pid):
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"never reached import {nth} after {after} (exit {process.returncode}): {err[-2000:]!r}")
    return process


def _signal_and_continue(process: subprocess.Popen[bytes], stop: signal.Signals) -> tuple[int, str]:
    """Send ``stop`` (SIGINT to the process group, as a terminal's Ctrl-C), continue the
    process, close its stdin; its exit status and stderr."""
    if stop == signal.SIGINT:
        os.killpg(process.pid, stop)
    else:
        os.kill(process.pid, stop)
    os.kill(process.pid, signal.SIGCONT)
    _, err = process.communicate(timeout=300)
    return process.returncode, err.decode(errors="replace")


def _said(err: str) -> list[str]:
    """stderr's lines that are not JSON log lines."""
    lines = []
    for line in err.splitlines():
        try:
            json.loads(line)
        except ValueError:
            lines.append(line)
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_mcpi_stopped_at_each_import_of_its_start_says_one_line_and_exits_128_plus_n(
    stop: signal.Signals, tmp_path: Path
) -> None:
    words = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)"}[stop]
    problems = []
    for nth in MCPI_MOMENTS:
        mark = uuid.uuid4().hex
        process = _stopped_at(
            [str(BIN / "mcpi"), "estimate", "-n", "1e9", "-w", "1", "-s", "1", *PATIENT],
            "mcpi_coordinator.cli.boot", nth, tmp_path / "hook", mark,
        )  # fmt: skip
        status, err = _signal_and_continue(process, stop)
        said = _said(err)
        if "Traceback" in err or status != 128 + stop or len(said) != 1 or words not in said[0]:
            problems.append(f"import {nth}: exit {status}, stderr {err[-1500:]!r}")
        left, _ = wait_until_gone(marked(MARK, mark), timeout_s=30)
        if left:
            problems.append(f"import {nth}: left running: {left}")
    assert problems == []


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_worker_stopped_at_each_import_of_its_start_ends_as_protocol_md_says(
    stop: signal.Signals, tmp_path: Path
) -> None:
    """stdin a pipe: Ctrl-C is its owner's, ignored (the worker then meets the end of its
    input: exit 0); SIGTERM keeps its default action (protocol.md §10.4): killed by it,
    without a word. Never a traceback."""
    expected = 0 if stop == signal.SIGINT else -signal.SIGTERM
    problems = []
    for nth in WORKER_MOMENTS:
        process = _stopped_at([str(BIN / "mcpi-worker")], "mcpi_worker.boot", nth, tmp_path / "hook", uuid.uuid4().hex)
        status, err = _signal_and_continue(process, stop)
        if "Traceback" in err or "KeyboardInterrupt" in err or status != expected or _said(err):
            problems.append(f"import {nth}: exit {status}, stderr {err[-1500:]!r}")
    assert problems == []
