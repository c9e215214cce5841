"""The pool's per-request path wakes only the tasks that carry the request.

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
