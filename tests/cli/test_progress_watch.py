"""``cli.progress.watch_pool``: what it reads of the pool, and when.

A real ``WorkerPool`` of in-process fake workers on Trio's mock clock; the watcher is
handed the pool through a proxy that counts its reads of ``stats``.
"""

from __future__ import annotations

import functools

import trio

from mcpi_coordinator.cli import progress
from mcpi_coordinator.pool.stats import PoolStats
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import fake_launcher


class CountingPool:
    """The pool as ``watch_pool`` sees it, counting how often it reads the slots."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.reads = 0

    @property
    def stats(self) -> PoolStats:
        self.reads += 1
        return self.pool.stats

    async def state_changed(self) -> None:
        await self.pool.state_changed()


async def test_a_pool_whose_workers_are_all_ready_is_not_read_again_until_a_slot_changes(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``mcpi estimate`` watches its pool for the whole run (to show who it waits on and
    warn of slow starts). It read the pool every ``POLL_S`` even once every worker was
    ready, a wake-up of the coordinator on a core the workers count on (five a second);
    now it reads it again only when a slot's state changes, as when a slot is retired."""
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour())
            async with WorkerPool(2, launcher=launcher) as pool:
                watched = CountingPool(pool)
                line = progress.RunProgress(total=10, workers=2)
                watch = functools.partial(
                    progress.watch_pool, watched, line, ["fake", "fake"], startup_timeout=10.0, max_start_attempts=3
                )  # type: ignore[arg-type]
                async with trio.open_nursery() as watching:
                    watching.start_soon(watch)
                    await trio.sleep(100 * progress.POLL_S)
                    idle_reads = watched.reads
                    ready_then = line.ready
                    pool.retire(1, "the test retires it")
                    while line.ready != 1:  # the retirement's state changes wake the watcher
                        await trio.sleep(progress.POLL_S)
                    watching.cancel_scope.cancel()
    assert ready_then == 2
    assert idle_reads <= 2, idle_reads
