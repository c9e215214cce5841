"""No worker given up on goes unseen: each is in ``PoolStats.failures`` (and ``--json``)
and is one warning line, also when the run finishes before the pool could replace it.

The hostile peer is ``raw_worker.py points_differ``: a correct worker until its first
``sample``, which it answers with one point too many (and a wrong count). The pool gives
up on it at once; its requests go to the honest worker beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest
import trio
from command_line import raw_worker_in_slot_0
from structlog.testing import capture_logs
from worker_process import PATIENT_START_S, RAW_WORKER

from mcpi_coordinator.launch.local import command_launcher
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_worker.kernels import KERNELS
from mcpi_worker.kernels.base import never

TIMEOUT = 120.0  # seconds; reached only by a hang
POINTS = 1_000_000


async def test_a_worker_given_up_on_while_the_run_ends_is_recorded_and_warned_once() -> None:
    """Slot 0 runs the hostile worker; its replacement would start only after a back-off
    longer than the run, so the run ends first (the case that left no line at all and
    ``restarts: 0``)."""
    commands = {0: [sys.executable, RAW_WORKER, "points_differ"], 1: [sys.executable, "-m", "mcpi_worker"]}
    chunks = [Chunk(seed=5, stream=s, points=2000) for s in range(6)]
    with capture_logs() as logs, trio.fail_after(TIMEOUT):
        async with WorkerPool(
            2, launcher=command_launcher(lambda i: commands[i]), backoff_s=3600.0, pipeline_depth=1,
            startup_timeout=PATIENT_START_S,
        ) as pool:
            hostile_pid = pool.stats.workers[0].pid
            async with pool.imap_unordered(chunks) as results:
                inside = sum([r.inside async for r in results])
            assert pool.stats.workers[0].state == "restarting"  # still backing off
        stats = pool.stats
    assert inside == sum(KERNELS["numpy"](5, s, 2000, never) for s in range(6))
    assert stats.restarts == 0
    [failure] = stats.failures
    assert (failure.slot, failure.pid, failure.welcomed) == (0, hostile_pid, True)
    assert "points for request" in failure.reason
    assert [w.failed for w in stats.workers] == [1, 0]
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["event"], e["pid"]) for e in warnings] == [("worker_failed", hostile_pid)]
    assert hostile_pid is not None and not psutil.pid_exists(hostile_pid)


def test_mcpi_estimate_json_and_stderr_name_every_worker_given_up_on() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mcpi_coordinator", "estimate", "-n", "20000", "--chunk-size", "1000", "-s", "3",
         "--workers", "2", "--json", "--worker-cmd", raw_worker_in_slot_0("points_differ")],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["inside"] == sum(KERNELS["numpy"](3, s, 1000, never) for s in range(20))
    failures = report["failures"]
    assert report["workers_failed"] == len(failures) >= 1
    assert all(f["slot"] == 0 and "points for request" in f["reason"] for f in failures)
    assert sum(w["failed"] for w in report["per_worker"]) == len(failures)
    lines = [line for line in run.stderr.splitlines() if "worker_failed" in line]
    assert len(lines) == len(failures), run.stderr
    for failure, line in zip(failures, lines, strict=True):
        assert "warning" in line and f"pid={failure['pid']}" in line
    assert "Traceback" not in run.stderr


@pytest.mark.slow
async def test_a_serial_worker_announcing_1024_jobs_is_not_killed_for_what_it_only_queued() -> None:
    """``raw_worker.py serial_jobs_1024`` welcomes with 1024 jobs and counts one sample at a
    time, answering each as it is counted (the spec worker's pure-Python ``python``
    kernel: a million-point chunk takes about 0.3 s, 16 of them several seconds). Every
    chunk is sent to it at once; charged from their sending against a 3 s task timeout,
    the later ones overran it while only queued, and the worker was killed. Only the
    oldest is charged now: the run is exact and nobody is given up on."""
    chunks = [Chunk(seed=9, stream=0, points=POINTS, kernel="python", streams=16)]  # in pieces, all at once
    command = [sys.executable, RAW_WORKER, "serial_jobs_1024"]
    with trio.fail_after(TIMEOUT * 2):
        async with WorkerPool(1, launcher=command_launcher(lambda _i: command), task_timeout=3.0) as pool:
            async with pool.imap_unordered(chunks) as results:
                inside = sum([r.inside async for r in results])
            stats = pool.stats
    assert inside == sum(KERNELS["python"](9, s, POINTS, never) for s in range(16))
    assert (stats.restarts, stats.failures) == (0, ())


@pytest.mark.slow
async def test_a_welcome_claiming_1024_jobs_does_not_take_the_work_of_the_worker_beside_it() -> None:
    """The same serial worker claiming 1024 jobs, beside a real one-job ``mcpi-worker``
    (about three times faster with the ``python`` kernel). Trusting the claim, the pool
    gave it a pipeline of 1024 requests and it took every piece of the range (the real
    worker got 0 to 3 of its 20 streams); now each worker gets requests for the jobs it
    has shown computing at once, and the faster worker does most of the work."""
    commands = {0: [sys.executable, RAW_WORKER, "serial_jobs_1024"], 1: [sys.executable, "-m", "mcpi_worker"]}
    chunks = [Chunk(seed=2, stream=0, points=POINTS, kernel="python", streams=20)]
    with trio.fail_after(TIMEOUT * 2):
        async with WorkerPool(2, launcher=command_launcher(lambda i: commands[i])) as pool:
            async with pool.imap_unordered(chunks) as results:
                inside = sum([r.inside async for r in results])
            stats = pool.stats
    assert inside == sum(KERNELS["python"](2, s, POINTS, never) for s in range(20))
    liar, real = stats.workers
    assert liar.chunks + real.chunks == 20 and real.chunks >= 8, (liar.chunks, real.chunks)
    assert stats.failures == ()
