"""What a real worker spends beside its counting: the threads it runs, the modules it loads.

On a machine where every core counts (two workers on two cores), any CPU a worker spends
on something else than its kernel is taken from the other worker's count
(``benchmarks/worker_cpu.py`` measures it). These tests hold the worker to what it needs.
"""

from __future__ import annotations

import os

import psutil
import pytest
from worker_process import WorkerUnderTest

from mcpi_worker.protocol import Result, Sample


def os_threads(pid: int) -> int:
    return psutil.Process(pid).num_threads()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no thread pool on one CPU")
def test_a_worker_counting_with_numpy_runs_no_blas_threads() -> None:
    """NumPy's OpenBLAS starts a spinning thread per further CPU when NumPy is imported; a
    worker never calls BLAS, so its threads are its own: the main (compute) thread and the
    reader, nothing else, after a sample counted with NumPy."""
    worker = WorkerUnderTest(env={"MCPI_NUMPY_IMPL": "numpy"})
    try:
        worker.handshake()
        worker.send(Sample(id=1, seed=1, stream=0, points=1 << 20, kernel="numpy"))
        result = worker.receive()
        assert isinstance(result, Result) and result.implementation == "numpy"
        assert os_threads(worker.pid) == 2
    finally:
        worker.close_stdin()
        assert worker.wait() == 0
