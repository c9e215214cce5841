"""A run starts work at its first ready worker and starts no worker it cannot use.

Issue 20, finding 7: ``--workers 200 -n 1e6`` (one chunk) started all 200 workers on 2
cores before sending anything, while a note said 199 would be idle. Counted, not timed:
launches by the fake launcher, starts logged by a real worker command, and the process
table.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import trio

from mcpi_coordinator.chunks import Chunk
from mcpi_coordinator.errors import RequestFailed
from mcpi_coordinator.launch.transport import WorkerProcess
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import FakeLauncher, fake_launcher
from mcpi_worker.kernels.numpy_impl import count as count_numpy

PYTHON = shlex.quote(sys.executable)


Launch = Callable[[int], Awaitable[WorkerProcess]]


def held_back(launcher: FakeLauncher, slots: set[int], release: trio.Event) -> Launch:
    """``launcher``, with the launches of ``slots`` held until ``release`` is set: workers
    still starting while the test runs."""

    async def launch(index: int) -> WorkerProcess:
        if index in slots:
            await release.wait()
        return await launcher(index)

    return launch


async def test_work_starts_at_the_first_ready_worker() -> None:
    release = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour())
            launch = held_back(launcher, {1, 2}, release)
            async with WorkerPool(3, launcher=launch, wait_for_all=False) as pool:
                result = await pool.sample(Chunk(seed=3, stream=0, points=1000))
                assert result.inside == count_numpy(3, 0, 1000) and result.slot == 0
                assert [w.state for w in pool.stats.workers] == ["ready", "starting", "starting"]
                assert len(launcher.launched) == 1
                release.set()
                # The others join as they come: a batch reaches all three.
                chunks = (Chunk(seed=3, stream=s, points=10) for s in range(30))
                async with pool.imap_unordered(chunks) as results:
                    slots = {r.slot async for r in results}
                assert len(launcher.launched) == 3
            nursery.cancel_scope.cancel()
    assert slots <= {0, 1, 2}


async def test_a_request_the_ready_workers_cannot_serve_waits_for_those_starting() -> None:
    """Slot 0 offers only the python kernel; the numpy sample must wait for slot 1, not
    fail as 'no worker offers it' while slot 1 has not said what it offers."""
    release = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            behaviours = {0: FakeBehaviour(kernels=("python",)), 1: FakeBehaviour()}
            launcher = fake_launcher(nursery, lambda index: behaviours[index])
            async with WorkerPool(2, launcher=held_back(launcher, {1}, release), wait_for_all=False) as pool:
                async with trio.open_nursery() as inner:
                    inner.start_soon(pool.sample, Chunk(seed=3, stream=0, points=100, kernel="numpy"))
                    await trio.testing.wait_all_tasks_blocked()
                    assert pool.stats.completed == 0  # waiting, not failed
                    release.set()
                assert pool.stats.workers[1].chunks == 1
            nursery.cancel_scope.cancel()


async def test_a_request_no_worker_serves_fails_once_every_worker_has_said_so() -> None:
    release = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(kernels=("python",)))
            async with WorkerPool(2, launcher=held_back(launcher, {1}, release), wait_for_all=False) as pool:
                failure: list[RequestFailed] = []

                async def numpy_sample() -> None:
                    try:
                        await pool.sample(Chunk(seed=3, stream=0, points=100, kernel="numpy"))
                    except RequestFailed as error:
                        failure.append(error)

                async with trio.open_nursery() as inner:
                    inner.start_soon(numpy_sample)
                    await trio.testing.wait_all_tasks_blocked()
                    assert not failure
                    release.set()
                assert len(failure) == 1 and "no worker offers kernel 'numpy'" in str(failure[0])
            nursery.cancel_scope.cancel()


def test_200_workers_for_one_chunk_start_one(tmp_path: Path) -> None:
    """The issue's command, with a worker command that logs each start: one worker is
    started (not 200), the count is the chunk's, and nothing is left running."""
    starts = tmp_path / "starts"
    command = f"sh -c 'echo {{i}} >> {shlex.quote(str(starts))}; exec {PYTHON} -m mcpi_worker'"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    run = subprocess.run(
        [sys.executable, "-m", "mcpi_coordinator", "estimate", "--workers", "200", "-n", "1e6", "-s", "4",
         "--json", "--worker-cmd", command],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert starts.read_text().split() == ["0"]
    assert report["workers"] == 1 and report["inside"] == count_numpy(4, 0, 1_000_000)
    assert "note: 1 chunk for 200 workers: starting 1 (199 would be idle)" in run.stderr
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_the_workers_a_run_can_use_are_all_started(tmp_path: Path) -> None:
    """Three chunks on five workers: three start; with --verify, one more for the checks."""
    for extra, expected in (((), 3), (("--verify", "1"), 4)):
        starts = tmp_path / f"starts{len(extra)}"
        command = f"sh -c 'echo {{i}} >> {shlex.quote(str(starts))}; exec {PYTHON} -m mcpi_worker'"
        run = subprocess.run(
            [sys.executable, "-m", "mcpi_coordinator", "estimate", "--workers", "5", "-n", "3000",
             "--chunk-size", "1000", "-s", "4", "--json", "--worker-cmd", command, *extra],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert sorted(starts.read_text().split()) == [str(i) for i in range(expected)]
        assert json.loads(run.stdout)["inside"] == sum(count_numpy(4, s, 1000) for s in range(3))
