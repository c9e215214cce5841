"""Whether the machine has a CPU to spare for an idle worker's spin.

After answering, an idle worker polls its input for a moment before it sleeps
(``server.DEFAULT_SPIN_S``), so that a quick next request finds it awake instead of
paying for waking a sleeping thread. That pays only while some CPU would otherwise
be idle. On a machine whose CPUs are all taken the spin is what the coordinator waits
behind: writing the answer to a pipe wakes the coordinator *synchronously* (the
writer tells the scheduler it is about to sleep), so, with no idle CPU to put it on,
the scheduler queues the coordinator on the CPU of the worker that wrote the answer,
and the worker, spinning instead of sleeping, keeps that CPU for its whole spin.
Every round trip then pays the spin (``perf sched timehist`` shows it as the
coordinator's scheduling delay; docs/bench.md has the trace and the figures, and
``python benchmarks/overhead.py --busy N`` reproduces them). A thread that gives the
CPU away while it spins (``sched_yield``) does not help: with scheduler autogrouping
the worker, in a session of its own, is in another group than the coordinator, and a
yield only reorders the yielding thread's own group.

``SpareCpu`` says whether to spin from the number of tasks runnable right now on the
whole machine (``/proc/loadavg``'s fourth field, the asking thread included) against
the machine's CPUs, looked at no more often than every ``LOOK_EVERY_S`` so that the
look costs an idle worker next to nothing. Where ``/proc/loadavg`` cannot be read it
uses the one-minute load average, and where that cannot be read either it spins, as
the worker always did.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

LOADAVG: Final = Path("/proc/loadavg")

LOOK_EVERY_S: Final[float] = 0.01
"""How long an answer of ``SpareCpu`` stands before it looks at the machine again: a
machine's load changes more slowly than an idle worker answers requests."""


def runnable_tasks(
    loadavg: Path = LOADAVG, load_average: Callable[[], tuple[float, float, float]] = os.getloadavg
) -> float | None:
    """How many tasks are runnable on this machine now (running or waiting for a CPU):
    ``/proc/loadavg``'s fourth field (``runnable/total``) on Linux; where that file cannot
    be read, the one-minute load average (``load_average``); None where neither can."""
    try:
        with open(loadavg, "rb") as figures:
            return int(figures.read().split()[3].split(b"/")[0])
    except (OSError, IndexError, ValueError):
        pass
    try:
        return load_average()[0]
    except OSError:
        return None


class SpareCpu:
    """``spare_cpu()``: True while the tasks runnable on the machine (``runnable``) are no
    more than its CPUs (``cpus``, default ``os.cpu_count()``), i.e. some CPU is idle or
    runs only the asker; True too when ``runnable`` cannot say. The answer is kept for
    ``look_every_s`` of ``clock``. Never raises."""

    def __init__(
        self,
        *,
        cpus: int | None = None,
        runnable: Callable[[], float | None] = runnable_tasks,
        clock: Callable[[], float] = time.monotonic,
        look_every_s: float = LOOK_EVERY_S,
    ) -> None:
        # The machine's CPUs, not this process's share (affinity, cgroup quota): the
        # count of runnable tasks it is held against is the whole machine's too.
        self._cpus = cpus if cpus is not None else os.cpu_count() or 1
        self._runnable = runnable
        self._clock = clock
        self._look_every_s = look_every_s
        self._next_look = -math.inf
        self._spare = True

    def __call__(self) -> bool:
        now = self._clock()
        if now >= self._next_look:
            self._next_look = now + self._look_every_s
            runnable = self._runnable()
            self._spare = runnable is None or runnable <= self._cpus
        return self._spare
