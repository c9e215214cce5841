"""``benchmarks/sessions.py``: its second way of starting workers really puts them in the
coordinator's session (a process group of their own, no session), and the script runs
beside a busy loop and refuses a negative ``--busy`` in one line with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import trio

from mcpi_coordinator.testing.processes import still_running

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TIMEOUT = 120.0  # seconds; a bound against a hang, far above what any step takes


@pytest.fixture
def sessions() -> Iterator[ModuleType]:
    """The script as a module (it imports its sibling busy_loops by name, as it does when run)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import sessions as module

        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


async def test_a_worker_started_in_the_coordinators_session_leads_a_group_of_its_own(sessions: ModuleType) -> None:
    with trio.fail_after(TIMEOUT):
        worker = await sessions.in_the_coordinators_session(0)
        try:
            assert os.getsid(worker.pid) == os.getsid(0)  # this session: no setsid
            assert os.getpgid(worker.pid) == worker.pid != os.getpgid(0)  # but a group of its own
        finally:
            worker.kill()
            await worker.wait()
    assert still_running([worker.pid]) == []


@pytest.mark.slow
def test_the_script_runs_beside_a_busy_loop() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "sessions.py"), "--busy", "1", "--tasks", "50", "--rounds", "1"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "beside 1 CPU-bound loop (a session of its own each)" in run.stdout
    assert "the coordinator's session" in run.stdout.split("medians")[1]


def test_a_negative_busy_is_refused_in_one_line() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "sessions.py"), "--busy", "-1"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    refusal = "sessions.py: error: argument --busy: '-1' is negative; give 0 or more"
    assert run.stderr.splitlines()[-1] == refusal
    assert "Traceback" not in run.stderr
