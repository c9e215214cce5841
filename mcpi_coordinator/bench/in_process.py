"""Approaches that call the kernel as a Python function: in this process, threads, a process pool.

Each maps ``tasks.count_chunk`` over the workload's chunks and sums the counts; they
differ only in who makes the calls, which is the whole lesson:
- ``sequential``: this thread, one chunk after another (the baseline);
- ``threads``: a ``ThreadPoolExecutor``; pure-Python work is serialised by the GIL,
  NumPy releases it inside its loops, so the numpy kernel may scale a little;
- ``process-pool``: a ``ProcessPoolExecutor``, one interpreter per worker; the classic
  answer for CPU-bound Python.

The two executors are driven from a thread of their own (``off_main.off_main_thread``),
so that Ctrl-C never lands inside ``concurrent.futures``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from typing import Any

from mcpi_coordinator.bench import tasks
from mcpi_coordinator.bench.measure import Measurement, dropping_queued_work, timed
from mcpi_coordinator.bench.off_main import off_main_thread
from mcpi_coordinator.bench.workload import Workload

MapFunction = Callable[..., Iterable[Any]]
"""``map`` itself or an executor's ``map``: same signature, different worker."""


def _count_with(map_function: MapFunction, workload: Workload) -> int:
    chunks = list(workload.chunks())
    count = partial(tasks.count_chunk, workload.kernel, workload.seed)
    return sum(map_function(count, [c.stream for c in chunks], [c.points for c in chunks]))


def sequential(workload: Workload, repeat: int) -> Measurement:
    runs = tuple(timed(lambda: _count_with(map, workload)) for _ in range(repeat))
    return Measurement("sequential", startup_s=None, runs=runs)


@off_main_thread
def threads(workload: Workload, repeat: int) -> Measurement:
    with dropping_queued_work(ThreadPoolExecutor(max_workers=workload.workers)) as executor:
        runs = tuple(timed(lambda: _count_with(executor.map, workload)) for _ in range(repeat))
    return Measurement("threads", startup_s=None, runs=runs)


@off_main_thread
def process_pool(
    workload: Workload, repeat: int, *, initializer: Callable[[], object] | None = None
) -> Measurement:
    """``initializer`` runs in each worker process: by default it ignores Ctrl-C, which the
    command handles for them, and ends the worker with the command (``tasks.start_worker``).
    benchmarks/ passes ``os.setsid``: each worker in a session of its own, like
    mcpi-worker, so that on a loaded Linux box with autogrouping the scheduler gives both
    pools the same share of the CPUs."""
    started = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=workload.workers, initializer=initializer or tasks.initializer())
    with dropping_queued_work(pool) as executor:
        # One no-op per worker makes the executor start them all before the clock runs.
        for warm_up in [executor.submit(tasks.noop) for _ in range(workload.workers)]:
            warm_up.result()
        startup_s = time.perf_counter() - started
        runs = tuple(timed(lambda: _count_with(executor.map, workload)) for _ in range(repeat))
    return Measurement("process-pool", startup_s=startup_s, runs=runs)
