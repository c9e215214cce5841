"""The ``trio-pool`` approach: mcpi's persistent ``WorkerPool``, driven as ``mcpi estimate`` drives it.

The pool is started (and every worker has answered its handshake) before the clock
runs; each timed run is one ``run_estimate`` over the workload's chunks on that same
pool, so the figures show what a long-lived pool costs per workload.
"""

from __future__ import annotations

import time

from mcpi_coordinator.bench.measure import Measurement, run_trio, timed_async
from mcpi_coordinator.bench.workload import Workload
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.run.estimate import run_estimate


async def _count(pool: WorkerPool, workload: Workload) -> int:
    result = await run_estimate(
        pool,
        points=workload.points,
        seed=workload.seed,
        chunk_size=workload.chunk_size,
        kernel=workload.kernel,
    )
    return result.inside


async def _measure(workload: Workload, repeat: int) -> Measurement:
    started = time.perf_counter()
    async with WorkerPool(workload.workers, workload.worker_command) as pool:
        startup_s = time.perf_counter() - started
        runs = [await timed_async(lambda: _count(pool, workload)) for _ in range(repeat)]
    return Measurement("trio-pool", startup_s=startup_s, runs=tuple(runs))


def trio_pool(workload: Workload, repeat: int) -> Measurement:
    return run_trio(_measure, workload, repeat)
