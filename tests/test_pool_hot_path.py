"""The pool's per-request path wakes only the tasks that carry the request, and spawns none.

Measured, not timed: a Trio instrument counts task steps, so the test is exact on a
loaded machine. Each task step costs a pass of the scheduler (~10 µs here), which is
what a tiny request's round trip is made of (see benchmarks/overhead.py).
"""

from __future__ import annotations

from collections import Counter

import trio

from mcpi_coordinator.pool import Chunk, WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import fake_launcher

REQUESTS = 200


class _StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()
        self.counting = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.counting:
            self.steps[task.name] += 1


async def test_the_stall_watchdog_sleeps_through_requests_that_are_answered() -> None:
    counter = _StepCounter()
    trio.lowlevel.add_instrument(counter)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                launcher = fake_launcher(nursery, FakeBehaviour())
                async with WorkerPool(1, launcher=launcher) as pool:
                    counter.counting = True
                    for stream in range(REQUESTS):
                        await pool.sample(Chunk(seed=1, stream=stream, points=10))
                    counter.counting = False
    finally:
        trio.lowlevel.remove_instrument(counter)
    # The slot task (its name says "slot") supervises the worker; before the fix it
    # woke twice per request (request sent, answer received) to re-arm its timer.
    slot_steps = sum(n for name, n in counter.steps.items() if "slot" in name)
    assert slot_steps < REQUESTS / 10, counter.steps.most_common(8)


class _Census(trio.abc.Instrument):
    """Task steps of the coordinator's tasks (not the in-process fakes'), and task
    spawns, while ``counting``."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()
        self.spawned = 0
        self.counting = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.counting and "fake" not in task.name.lower() and "testing" not in task.name:
            self.steps[task.name] += 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += self.counting


async def test_one_request_costs_two_task_steps() -> None:
    # The caller sends (a direct write: no writer task woken) and waits; the stdout
    # reader wakes it. Before: + a writer-task step, + a lane checkpoint.
    census = _Census()
    trio.lowlevel.add_instrument(census)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                launcher = fake_launcher(nursery, FakeBehaviour())
                async with WorkerPool(1, launcher=launcher) as pool:
                    await pool.sample(Chunk(seed=1, stream=0, points=10))  # warm
                    census.counting = True
                    for stream in range(REQUESTS):
                        await pool.sample(Chunk(seed=1, stream=stream, points=10))
                        await pool.ping()
                    census.counting = False
                    nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(census)
    requests = 2 * REQUESTS
    assert sum(census.steps.values()) <= 2 * requests + 10, census.steps.most_common(5)
    assert census.spawned == 0


async def test_a_batch_costs_no_task_per_chunk() -> None:
    census = _Census()
    trio.lowlevel.add_instrument(census)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                launcher = fake_launcher(nursery, FakeBehaviour())
                async with WorkerPool(2, launcher=launcher, pipeline_depth=4) as pool:
                    census.counting = True
                    work = (Chunk(seed=1, stream=s, points=10) for s in range(REQUESTS))
                    async with pool.imap_unordered(work) as results:
                        done = [result async for result in results]
                    census.counting = False
                    nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(census)
    assert len(done) == REQUESTS
    assert census.spawned == 0
    # One checkpoint per result for the consumer; the readers' steps are shared by
    # the answers of one read. A task per chunk took ~5 steps a chunk.
    assert sum(census.steps.values()) <= 2.5 * REQUESTS, census.steps.most_common(5)
