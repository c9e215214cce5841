"""How ``mcpi`` ends when a person or a pipe ends it early (issue 20, items 2 and 3):
a reader of stdout that has left, and Ctrl-C while the command is still starting.

Both are normal ends for a command-line tool: no traceback, the usual exit status
(141 and 130), and no process of the run left behind, checked in the process table.
Each run carries a mark in its environment, which every process it starts inherits,
so "left behind" means any live process with that mark.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil
import pytest

from mcpi_coordinator.testing.processes import wait_until_gone

MCPI = [sys.executable, "-m", "mcpi_coordinator"]
CLEAN_ENV = {
    k: v for k, v in os.environ.items() if not k.startswith("MCPI_") and k not in ("NO_COLOR", "COLUMNS")
}
MARK = "MCPI_TEST_RUN_MARK"
PATIENT = ("--startup-timeout", "300")
"""A worker may take long to start on a loaded machine: these tests are not about that."""


def _marked(mark: str) -> list[int]:
    """Live processes whose environment carries ``mark``: the run's, and its children's."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARK) == mark:
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def _assert_nothing_left(mark: str) -> None:
    left, _ = wait_until_gone(_marked(mark), timeout_s=30)
    assert left == [], f"processes of the run still running: {left}"


def _env(mark: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**CLEAN_ENV, MARK: mark, **(extra or {})}


def run_into_closed_pipe(args: list[str], cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run ``mcpi ARGS`` with stdout a pipe whose reader has already left: every write
    fails, as with ``| head -0`` or ``| true`` at its most unlucky moment."""
    mark = uuid.uuid4().hex
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [*MCPI, *args], stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE,
            text=True, env=_env(mark), timeout=300, check=False, cwd=cwd,
        )  # fmt: skip
    finally:
        os.close(write_end)
    return done, mark


@pytest.fixture
def part_file(tmp_path: Path) -> Iterator[Path]:
    done = subprocess.run(
        [*MCPI, "estimate", "-n", "2000", "--chunk-size", "1000", "-w", "1", "-s", "3", "--json", "-q", *PATIENT],
        capture_output=True, text=True, env=CLEAN_ENV, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    json.loads(done.stdout)
    path = tmp_path / "whole.json"
    path.write_text(done.stdout)
    yield path


STDOUT_COMMANDS = {
    "estimate": ["estimate", "-n", "2e6", "-w", "2", "-s", "1", "-q", *PATIENT],
    "estimate --json": ["estimate", "-n", "2e6", "-w", "2", "-s", "1", "--json", *PATIENT],
    "estimate, a resumed finished run": ["estimate", "--resume", "{checkpoint}", "-q"],
    "scatter": ["scatter", "-n", "100", "-s", "1", "-o", "{tmp}/q.png", "-q"],
    "scatter --json": ["scatter", "-n", "100", "-s", "1", "-o", "{tmp}/q.png", "--json"],
    "combine": ["combine", "{part}"],
    "combine --json": ["combine", "{part}", "--json"],
    "bench overhead": ["bench", "overhead", "-n", "30", "-w", "1"],  # its workers start under its own timeouts
    "bench approaches": ["bench", "approaches", "-n", "1e5", "-r", "1", "-w", "1", "--only", "sequential,trio-pool"],
    "completion": ["completion", "bash"],
    "--help": ["--help"],
    "estimate --help": ["estimate", "--help"],
    "--version": ["--version"],
}


@pytest.mark.parametrize("name", list(STDOUT_COMMANDS))
def test_a_reader_that_left_ends_every_command_quietly(name: str, tmp_path: Path, part_file: Path) -> None:
    checkpoint = tmp_path / "run.ckpt"
    if "{checkpoint}" in STDOUT_COMMANDS[name]:
        made = subprocess.run(
            [*MCPI, "estimate", "-n", "3000", "--chunk-size", "1000", "-w", "1", "-s", "5", "-q",
             "--checkpoint", str(checkpoint), *PATIENT],
            capture_output=True, text=True, env=CLEAN_ENV, timeout=600, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    args = [
        word.format(tmp=tmp_path, part=part_file, checkpoint=checkpoint) for word in STDOUT_COMMANDS[name]
    ]
    done, mark = run_into_closed_pipe(args, cwd=tmp_path)
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
    assert done.returncode == 141, done.stderr
    _assert_nothing_left(mark)


def test_grep_m1_and_true_on_a_real_shell_pipeline(tmp_path: Path) -> None:
    """The issue's own commands, as a shell runs them (a race: the reader may leave
    before or after the writes; either way no traceback, and the status of each
    side is the usual one)."""
    mark = uuid.uuid4().hex
    estimate = f"'{sys.executable}' -m mcpi_coordinator estimate -q -n 2e6 -w 1 --startup-timeout 300"
    script = f"set -o pipefail; {estimate} | grep -m1 '^π'; echo status $?; {estimate} | true; echo status $?"
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=_env(mark), timeout=300, check=False
    )
    assert "Traceback" not in done.stderr, done.stderr
    statuses = [line for line in done.stdout.splitlines() if line.startswith("status")]
    assert all(status in ("status 0", "status 141") for status in statuses), done.stdout
    assert done.stdout.startswith("π ≈"), done.stdout
    _assert_nothing_left(mark)


# ------------------------------------------------------------------ Ctrl-C while starting

STARTUP_MOMENTS = [
    "mcpi_coordinator.cli.main",  # the command's own code begins
    "argparse",
    "trio",
    "numpy",
    "structlog",
    "mcpi_coordinator.pool.worker_pool",
    "mcpi_coordinator.run.checkpoint",
]
"""Modules ``mcpi estimate`` imports as it starts; Ctrl-C comes just after each one."""


@pytest.mark.parametrize("module", STARTUP_MOMENTS)
def test_ctrl_c_while_the_command_starts_is_a_quiet_130(module: str) -> None:
    """``-X importtime`` writes a line to stderr as each import completes: the signal
    is sent on reading the module's line, so it lands while the next ones load (or,
    on a fast machine, a little later), never on a guess of the real clock."""
    mark = uuid.uuid4().hex
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "mcpi_coordinator",
         "estimate", "-n", "1e9", "-w", "2", "-s", "1", *PATIENT],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(mark),
    )  # fmt: skip
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if line.rpartition("|")[2].strip() == module:
                process.send_signal(signal.SIGINT)
                break
        else:
            pytest.fail(f"{module} was never imported: {''.join(seen)[-2000:]}")
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    said = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert process.returncode == 130, said
    assert out == ""
    assert len(said) == 1 and "interrupted" in said[0], said
    _assert_nothing_left(mark)


BENCH_POOLS = {
    "bench overhead (process-pool)": ["bench", "overhead", "-n", "1000000", "-w", "2"],
    "bench approaches (process-pool)": ["bench", "approaches", "--only", "process-pool", "-n", "1e11", "-w", "2"],
}


@pytest.mark.parametrize("name", list(BENCH_POOLS))
def test_ctrl_c_in_a_terminal_while_a_bench_pool_works_is_one_line(name: str) -> None:
    """A terminal's Ctrl-C goes to the whole foreground process group, and a pool's forked
    workers are in it: each used to print its own KeyboardInterrupt traceback. The
    command runs in a group of its own here, which stands for the terminal's, and the
    signal goes to the group once the pool's workers are working."""
    mark = uuid.uuid4().hex
    process = subprocess.Popen(
        [*MCPI, *BENCH_POOLS[name]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_env(mark), start_new_session=True,
    )  # fmt: skip
    try:
        command = psutil.Process(process.pid)
        deadline = time.monotonic() + 300  # a bound against a hang: workers start slowly on a busy machine
        while len([child for child in command.children() if child.cpu_times().user > 0.05]) < 2:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the pool's workers never worked"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    _assert_nothing_left(mark)
