"""``mcpi estimate`` against workers that misbehave with their processes and pipes, judged
from outside: the exit code, the JSON, the stderr lines and the process table.

Worker 0 is ``raw_worker.py FAULT`` (tests/raw_worker.py says what each fault does), the
other the real ``mcpi-worker``. Whatever worker 0 does, the run must end with exit 0 and
the undisturbed count, worker 0 must be one ``worker_failed`` line and one entry of the
JSON's ``failures``, and no process of the run may be left running (every process the
run started carries a mark in its environment; the process table is searched for it).

``--kernel python`` keeps numba's cache-warming process (meant to outlive a run) out of
the process table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from command_line import MCPI, PATIENT, raw_worker_in_slot_0

from mcpi_worker.kernels import KERNELS

TIMEOUT = 300  # seconds; reached only by a hang
MARK = "MCPI_HOSTILE_RUN_MARK"
SEED, CHUNKS, CHUNK = 4, 40, 1000

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's process table")


def marked(mark: str) -> list[psutil.Process]:
    """Live processes (zombies excluded) whose environment carries ``mark``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARK) == mark and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def hostile_run(fault: str, tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """``mcpi estimate --json`` with worker 0 ``raw_worker.py FAULT``: the finished run and
    the pids of what the run left running (killed here, so that a failure leaves nothing)."""
    mark = uuid.uuid4().hex
    run = subprocess.run(
        [*MCPI, "estimate", "--json", *PATIENT, "-n", str(CHUNKS * CHUNK), "--chunk-size", str(CHUNK),
         "-s", str(SEED), "--kernel", "python", "--workers", "2", *options,
         "--worker-cmd", raw_worker_in_slot_0(fault)],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False,
        env={**os.environ, MARK: mark, "RAW_WORKER_PIDFILE": str(tmp_path / "children")},
    )  # fmt: skip
    left = marked(mark)
    for process in left:
        process.send_signal(signal.SIGKILL)
    return run, [process.pid for process in left]


def one_failure_of_worker_0(run: subprocess.CompletedProcess[str], left: list[int]) -> dict[str, Any]:
    """The run's judgement: exit 0, the count, one failure of worker 0 said once in each
    place, nothing left running. Returns that failure."""
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert left == [], f"left running: {left}"
    report = json.loads(run.stdout)
    assert report["inside"] == sum(KERNELS["python"](SEED, s, CHUNK) for s in range(CHUNKS))
    warned = [line for line in run.stderr.splitlines() if "worker_failed" in line]
    assert len(warned) == 1 and "worker 0 (" in warned[0], run.stderr
    [failure] = report["failures"]
    assert failure["slot"] == 0 and report["workers_failed"] == 1, report["failures"]
    assert [worker["failed"] for worker in report["per_worker"]] == [1, 0]
    assert report["per_worker"][1]["pid"] is not None  # the pool as the run ended, not as it closed
    return failure  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("child_holds_pipes", "exited (exit code 0)"),
        ("setpgid_child", "exited (exit code 0)"),
        ("close_stdout", "closed its stdout"),
        ("max_frame_then_eof", "stream ended inside a frame"),
    ],
)
def test_a_worker_that_leaves_at_its_first_sample_is_one_failure_and_leaves_nothing(
    fault: str, reason: str, tmp_path: Path
) -> None:
    """A child left holding the pipes (in the worker's group, or in a group of its own),
    a stdout closed by a worker that lives on, a frame announced at the size limit and
    never sent: each is one failure, reported even though the run ends before the worker
    is replaced (the JSON used to be read before the pool had finished stopping worker 0,
    and said ``failures: []`` when that took longer than the rest of the run: here, a
    second waiting for the stderr its child holds)."""
    run, left = hostile_run(fault, tmp_path)
    failure = one_failure_of_worker_0(run, left)
    assert reason in failure["reason"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "ended_by"),
    [("deaf", "killed by SIGKILL"), ("sigstop", "killed by SIGKILL"), ("stall_mid_frame", "")],
)
def test_a_worker_silent_on_its_sample_costs_one_task_timeout_and_is_ended(
    fault: str, ended_by: str, tmp_path: Path
) -> None:
    """A worker deaf to SIGTERM, SIGINT and SIGHUP, one that stopped itself (SIGSTOP), and
    one that fell silent inside a frame: the task timeout ends each once; SIGKILL ends the
    first two after SIGTERM's grace. The failure is in the JSON though the rest of the run
    was over while worker 0 was being stopped."""
    run, left = hostile_run(fault, tmp_path, "--task-timeout", "10")
    failure = one_failure_of_worker_0(run, left)
    assert "no answer within the task timeout (10 s)" in failure["reason"] and ended_by in failure["reason"]
