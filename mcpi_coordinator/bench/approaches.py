"""Every approach ``mcpi bench approaches`` compares, by name, in the order shown."""

from __future__ import annotations

from collections.abc import Callable

from mcpi_coordinator.bench import in_process, per_chunk_process, trio_pool
from mcpi_coordinator.bench.measure import Measurement
from mcpi_coordinator.bench.workload import Workload

APPROACHES: dict[str, Callable[[Workload, int], Measurement]] = {
    "sequential": in_process.sequential,
    "threads": in_process.threads,
    "process-pool": in_process.process_pool,
    "asyncio-subprocess": per_chunk_process.asyncio_subprocess,
    "trio-run-process": per_chunk_process.trio_run_process,
    "trio-pool": trio_pool.trio_pool,
}
"""Each is ``(workload, repeat) -> Measurement``."""
