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
import pty
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from command_line import MCPI, PATIENT, raw_worker_in_slot_0, read_until_closed
from worker_process import RAW_WORKER

from mcpi_coordinator.testing.processes import peak_rss_until_exit
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


def hostile_run(
    fault: str, tmp_path: Path, *options: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """``mcpi estimate --json`` with worker 0 ``raw_worker.py FAULT`` (``env`` added to its
    environment): the finished run and the pids of what the run left running (killed here,
    so that a failure leaves nothing)."""
    mark = uuid.uuid4().hex
    run = subprocess.run(
        [*MCPI, "estimate", "--json", *PATIENT, "-n", str(CHUNKS * CHUNK), "--chunk-size", str(CHUNK),
         "-s", str(SEED), "--kernel", "python", "--workers", "2", *options,
         "--worker-cmd", raw_worker_in_slot_0(fault)],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False,
        env={**os.environ, MARK: mark, "RAW_WORKER_PIDFILE": str(tmp_path / "children"), **(env or {})},
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


@pytest.fixture(scope="module")
def honest_inside() -> int:
    """The count of the hostile runs' work by an all-honest ``mcpi estimate`` (two real workers)."""
    run = subprocess.run(
        [*MCPI, "estimate", "--json", *PATIENT, "-n", str(CHUNKS * CHUNK), "--chunk-size", str(CHUNK),
         "-s", str(SEED), "--kernel", "python", "--workers", "2"],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    return int(json.loads(run.stdout)["inside"])


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("unknown_code", "quantum_flux"),
        ("refuse_offered_kernel", "unknown_kernel"),
        ("refuse_valid", "invalid_request"),
        ("refuse_fresh_id", "duplicate_id"),
        ("refuse_after_welcome", "handshake_required"),
    ],
)
def test_a_worker_refusing_for_good_a_request_its_welcome_admits_is_one_failure(
    fault: str, code: str, tmp_path: Path, honest_inside: int
) -> None:
    """A per-request error that is not retryable, answering a sample our coordinator
    checked against the worker's welcome (an error code from the future, ``unknown_kernel``
    for a kernel it offers, ``invalid_request`` for a valid sample, ``duplicate_id`` for a
    fresh id, ``handshake_required`` after its welcome): the worker contradicts its welcome,
    and is one failure naming the code; the chunk is counted by an honest worker, and the
    run ends 0 with an all-honest run's count. (It used to end the run: exit 1, "worker 0
    refused the request: quantum_flux: new".) ``$RAW_WORKER_ONCE``: only the first
    worker 0 refuses, its replacement is honest."""
    run, left = hostile_run(fault, tmp_path, env={"RAW_WORKER_ONCE": str(tmp_path / "struck")})
    failure = one_failure_of_worker_0(run, left)
    assert json.loads(run.stdout)["inside"] == honest_inside
    assert f"{code}: new" in failure["reason"], failure["reason"]
    [warned] = [line for line in run.stderr.splitlines() if "worker_failed" in line]
    assert f"{code}: new" in warned


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


def test_a_worker_cannot_write_on_the_terminal_mcpi_runs_in() -> None:
    """A worker leads a session of its own, which has no controlling terminal: its
    ``open("/dev/tty")`` fails (ENXIO), so nothing it writes there reaches the user's
    screen past the coordinator's escaping of its stderr, and it cannot read the user's
    keys. ``dev_tty`` tries, and says on stderr (relayed at ``info``) how it went. ``mcpi``
    runs with a pseudo-terminal as its controlling terminal, as in a user's shell."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [*MCPI, "estimate", *PATIENT, "-n", "40000", "--chunk-size", "1000", "--kernel", "python", "--workers", "2",
         "--log-level", "info", "--log-format", "json", "--worker-cmd", raw_worker_in_slot_0("dev_tty")],
        preexec_fn=lambda: os.login_tty(follower), pass_fds=(follower,),  # noqa: PLW1509 (no threads here)
    )  # fmt: skip
    os.close(follower)
    seen = read_until_closed(leader, TIMEOUT).decode()
    code = process.wait(timeout=TIMEOUT)
    os.close(leader)
    assert code == 0, seen
    assert "dev_tty: No such device or address" in seen  # it tried, and could not
    assert "raw-worker was here" not in seen


@pytest.mark.slow
def test_a_worker_stopped_or_deaf_to_sigterm_and_sigint_costs_nothing_when_a_run_is_interrupted(
    tmp_path: Path,
) -> None:
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it) while worker
    0 ignores SIGTERM, SIGINT and SIGHUP, and worker 1 has stopped itself (SIGSTOP), each
    on its first sample: exit 130 with one line, and no process of the run left (SIGKILL
    after SIGTERM's grace ends both, stopped or not). The signal is sent once both have
    struck, which they say in a file."""
    mark, struck = uuid.uuid4().hex, tmp_path / "struck"
    worker = f"{shlex.quote(sys.executable)} {shlex.quote(RAW_WORKER)}"
    command = f"sh -c 'if [ {{i}} = 0 ]; then exec {worker} deaf; else exec {worker} sigstop; fi'"
    process = subprocess.Popen(
        [*MCPI, "estimate", *PATIENT, "-n", "1e9", "--kernel", "python", "--workers", "2", "--task-timeout", "600",
         "--worker-cmd", command],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, MARK: mark, "RAW_WORKER_STRUCK": str(struck)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (struck.exists() and len(struck.read_text().split()) == 2):
            assert process.poll() is None and time.monotonic() < deadline, "the workers never struck"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    left = marked(mark)
    for leftover in left:
        leftover.send_signal(signal.SIGKILL)
    assert process.returncode == 130, err
    assert out == "" and len(err.strip().splitlines()) == 1 and "interrupted" in err, err
    assert [leftover.pid for leftover in left] == []


@pytest.mark.slow
def test_a_stderr_flood_without_newlines_and_with_1_mib_lines_keeps_the_coordinator_small() -> None:
    """``stderr_no_newlines`` writes 64 MiB without a newline, then sixteen 1 MiB lines,
    before its welcome: the coordinator relays it in pieces of bounded size, and its peak
    memory stays far below what went through it."""
    process = psutil.Popen(
        [*MCPI, "estimate", "--json", *PATIENT, "-n", str(CHUNKS * CHUNK), "--chunk-size", str(CHUNK),
         "-s", str(SEED), "--kernel", "python", "--workers", "2",
         "--worker-cmd", raw_worker_in_slot_0("stderr_no_newlines")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        peak_rss = peak_rss_until_exit(process, poll_s=0.05)
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    report = json.loads(out)
    assert report["inside"] == sum(KERNELS["python"](SEED, s, CHUNK) for s in range(CHUNKS))
    assert report["failures"] == []
    assert peak_rss < 80 * 2**20  # 80 MiB went through; the coordinator kept none of it
