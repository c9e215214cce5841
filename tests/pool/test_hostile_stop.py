"""A worker that no signal ends: the pool gives up on it after a bounded wait, says so,
and goes on, instead of waiting for its exit for ever.

The OS has such workers: one in uninterruptible sleep (a read from a hung NFS or FUSE
mount: SIGKILL acts only once the read returns), or one that now runs as another user
(a set-user-ID program that changed its real user: ``kill`` fails with EPERM). Here an
in-process fake stands in for it (``Unkillable``: its ``terminate`` and ``kill`` reach
nothing), on a mock clock.
"""

from __future__ import annotations

import trio
import trio.testing
from structlog.testing import capture_logs

from mcpi_coordinator.launch.transport import WorkerProcess
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import FakeWorkerProcess, by_launch, fake_launcher
from mcpi_worker.kernels import count_numpy

SEED, POINTS = 7, 2000
FAKE_TIME_BOUND = 3600.0
"""Mock-clock seconds after which ``rescue`` ends the unkillable fakes itself: a pool
that waits for ever for them (its slots' stops are shielded from cancellation, so a
``fail_after`` could not end the wait) then closes, and the test fails instead of hanging."""


class Unkillable:
    """A fake worker that no signal of ours reaches: ``terminate`` and ``kill`` are
    recorded in ``signals`` and do nothing else."""

    def __init__(self, inner: FakeWorkerProcess) -> None:
        self._inner = inner
        self.stdin, self.stdout, self.stderr = inner.stdin, inner.stdout, inner.stderr
        self.signals: list[str] = []

    @property
    def pid(self) -> int:
        return self._inner.pid

    @property
    def returncode(self) -> int | None:
        return self._inner.returncode

    async def wait_exited(self) -> int:
        return await self._inner.wait_exited()

    async def wait(self) -> int:
        return await self._inner.wait()

    def terminate(self) -> None:
        self.signals.append("SIGTERM")

    def kill(self) -> None:
        self.signals.append("SIGKILL")


async def rescue(processes: list[Unkillable], rescued: list[bool]) -> None:
    """After ``FAKE_TIME_BOUND``, end ``processes`` for real and note it in ``rescued``."""
    await trio.sleep(FAKE_TIME_BOUND)
    rescued.append(True)
    for process in processes:
        process._inner.kill()


async def test_a_hung_worker_no_signal_ends_is_left_running_and_its_chunk_done_elsewhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """It hangs on its first sample, deaf to EOF: the task timeout gives up on it, SIGTERM
    and SIGKILL reach nothing, and after a bounded wait the pool leaves it running (one
    failure saying so) and its replacement counts the chunk."""
    unkillable: list[Unkillable] = []
    rescued: list[bool] = []
    with trio.fail_after(2 * FAKE_TIME_BOUND):
        async with trio.open_nursery() as nursery:
            fakes = fake_launcher(nursery, by_launch(FakeBehaviour(hang_after=0)))
            nursery.start_soon(rescue, unkillable, rescued)

            async def launch(index: int) -> WorkerProcess:
                process = await fakes(index)
                if unkillable:
                    return process
                unkillable.append(Unkillable(process))  # type: ignore[arg-type]
                return unkillable[0]

            with capture_logs() as logs:
                async with WorkerPool(1, launcher=launch, task_timeout=5.0, backoff_s=0.0) as pool:
                    result = await pool.sample(Chunk(SEED, 0, POINTS))
            nursery.cancel_scope.cancel()  # the fake left running: its tasks end with the test
    assert rescued == [], "the pool waited for ever for a worker no signal ends"
    assert result.inside == count_numpy(SEED, 0, POINTS)
    assert unkillable[0].signals == ["SIGTERM", "SIGKILL"]
    [failure] = pool.stats.failures
    assert "no answer within the task timeout" in failure.reason and "left running" in failure.reason
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["worker_failed"]


async def test_closing_the_pool_does_not_wait_for_ever_for_a_worker_no_signal_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The pool is left while its worker hangs on a sample, deaf to ``shutdown`` and EOF,
    and signals reach nothing: the pool closes after a bounded wait all the same, with one
    warning naming the worker."""
    launched: list[Unkillable] = []
    rescued: list[bool] = []
    with trio.fail_after(2 * FAKE_TIME_BOUND):
        async with trio.open_nursery() as nursery:
            fakes = fake_launcher(nursery, FakeBehaviour(hang_after=0))
            nursery.start_soon(rescue, launched, rescued)

            async def launch(index: int) -> WorkerProcess:
                launched.append(Unkillable(await fakes(index)))  # type: ignore[arg-type]
                return launched[-1]

            with capture_logs() as logs:
                async with WorkerPool(1, launcher=launch, task_timeout=FAKE_TIME_BOUND) as pool:
                    with trio.move_on_after(10.0):
                        await pool.sample(Chunk(SEED, 0, POINTS))
            nursery.cancel_scope.cancel()
    assert rescued == [], "the pool waited for ever for a worker no signal ends"
    assert launched[0].signals == ["SIGTERM", "SIGKILL"]
    [left] = [e for e in logs if e["log_level"] == "warning"]
    assert left["event"] == "worker_left_running" and left["pid"] == launched[0].pid, left
    assert pool.stats.failures == ()
