"""The mcpi coordinator: a persistent pool of mcpi-worker processes driven from Trio.

The public API is importable from here::

    from mcpi_coordinator import Chunk, WorkerPool

    async with WorkerPool(size=4) as pool:
        result = await pool.sample(Chunk(seed=1, stream=0, points=10_000_000))

Layers, from the bottom (each imports only from the ones above it in this list; the
contracts under ``[tool.importlinter]`` in pyproject.toml are the exact statement, and
CI's ``lint-imports`` holds the code to them):

- ``mcpi_worker.protocol``, ``mcpi_worker.constants`` and ``mcpi_worker.kernel_policy``:
  the sans-IO protocol core, shared with the worker; the worker's kernel names and
  limits; how ``MCPI_NUMPY_IMPL`` is read. Nothing here imports the worker's process
  (``main``, ``server``), and nothing below the run imports its kernels (NumPy).
- ``terminal_text`` and ``arguments``, then ``logs`` and ``files``: untrusted text made
  safe for a terminal; argparse value types (exact whole numbers, stated bounds), which
  the command, the fake worker and ``launch.early`` read numbers with; the library's
  loggers; files mcpi does not trust, read and written.
- ``errors``: mcpi's own errors (``McpiError`` and its kinds), which every layer raises.
- ``launch``: how a worker process is started and stopped (local, ssh, Slurm).
- ``connection``: the Trio driver of one worker's pipes and protocol state, and the one
  place its low-level failures become a ``WorkerFailure`` (``connection.failures``).
- ``pool``: slots and supervision, dispatch and batches: ``WorkerPool``; and
  ``pool.chunks``, its units of work and their results.
- ``run``: estimating pi on a pool (``run.estimate``), what survives the coordinator
  (``run.checkpoint``), which chunks count (``run.prefix``), counting chunks again
  (``run.verify``), a run split over coordinators (``run.parts``), the interval and the
  stopping rule (``run.statistics``); ``run/__init__.py`` gives their order.
- ``bench`` and ``testing``, neither importing the other: the compared approaches
  behind ``mcpi bench``; fake workers and process-table checks for users' own tests.
- ``cli``: the ``mcpi`` command: subcommands, arguments, progress, plots, exit codes.
"""

from __future__ import annotations

import importlib

# The public names are imported on first use (PEP 562), not here: the subprocess fake
# worker (``python -m mcpi_coordinator.testing.fake_worker``) lives in this package and
# must start without importing Trio, as a real worker does.
_PUBLIC: dict[str, str] = {
    # One version for the distribution, written there; not imported here either: the
    # ``mcpi`` command imports this package before it holds Ctrl-C (``cli.boot``).
    "__version__": "mcpi_worker",
    "Chunk": "mcpi_coordinator.pool.chunks",
    "ChunkResult": "mcpi_coordinator.pool.chunks",
    "ChunkFailed": "mcpi_coordinator.errors",
    "McpiError": "mcpi_coordinator.errors",
    "PoolClosed": "mcpi_coordinator.errors",
    "PoolExhausted": "mcpi_coordinator.errors",
    "RequestFailed": "mcpi_coordinator.errors",
    "InvalidChunk": "mcpi_coordinator.errors",
    "WorkerFailure": "mcpi_coordinator.errors",
    "command_launcher": "mcpi_coordinator.launch.local",
    "default_worker_command": "mcpi_coordinator.launch.local",
    "spawn_worker": "mcpi_coordinator.launch.local",
    "Launcher": "mcpi_coordinator.launch.transport",
    "WorkerProcess": "mcpi_coordinator.launch.transport",
    "DEFAULT_PIPELINE_DEPTH": "mcpi_coordinator.pool.worker_pool",
    "PoolStats": "mcpi_coordinator.pool.stats",
    "SlotState": "mcpi_coordinator.pool.stats",
    "WorkerPool": "mcpi_coordinator.pool.worker_pool",
    "WorkerStats": "mcpi_coordinator.pool.stats",
    "default_task_timeout": "mcpi_coordinator.pool.worker_pool",
    "EstimateResult": "mcpi_coordinator.run.estimate",
    "iter_chunks": "mcpi_coordinator.run.estimate",
    "run_estimate": "mcpi_coordinator.run.estimate",
}

# typing.TYPE_CHECKING without importing typing (mypy knows the name): the ``mcpi``
# command imports this package before it can hold Ctrl-C (``cli.boot``), so the less
# it loads here, the shorter that window.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from mcpi_coordinator.errors import (
        ChunkFailed,
        InvalidChunk,
        McpiError,
        PoolClosed,
        PoolExhausted,
        RequestFailed,
        WorkerFailure,
    )
    from mcpi_coordinator.launch.local import command_launcher, default_worker_command, spawn_worker
    from mcpi_coordinator.launch.transport import Launcher, WorkerProcess
    from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
    from mcpi_coordinator.pool.stats import PoolStats, SlotState, WorkerStats
    from mcpi_coordinator.pool.worker_pool import DEFAULT_PIPELINE_DEPTH, WorkerPool, default_task_timeout
    from mcpi_coordinator.run.estimate import EstimateResult, iter_chunks, run_estimate
    from mcpi_worker import __version__


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'mcpi_coordinator' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_PIPELINE_DEPTH",
    "Chunk",
    "ChunkFailed",
    "ChunkResult",
    "EstimateResult",
    "InvalidChunk",
    "Launcher",
    "McpiError",
    "PoolClosed",
    "PoolExhausted",
    "PoolStats",
    "RequestFailed",
    "SlotState",
    "WorkerFailure",
    "WorkerPool",
    "WorkerProcess",
    "WorkerStats",
    "__version__",
    "command_launcher",
    "default_task_timeout",
    "default_worker_command",
    "iter_chunks",
    "run_estimate",
    "spawn_worker",
]
