"""What a real worker spends beside its counting: the threads it runs, the modules it loads.

On a machine where every core counts (two workers on two cores), any CPU a worker spends
on something else than its kernel is taken from the other worker's count
(``benchmarks/worker_cpu.py`` measures it). These tests hold the worker to what it needs.
"""

from __future__ import annotations

import os
import time

import psutil
import pytest
from worker_process import WorkerUnderTest

from mcpi_worker import constants
from mcpi_worker.kernels.numpy_impl import count as count_numpy
from mcpi_worker.protocol import Result, Sample


def os_threads(pid: int) -> int:
    return psutil.Process(pid).num_threads()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no thread pool on one CPU")
def test_a_worker_counting_with_numpy_runs_no_blas_threads() -> None:
    """NumPy's OpenBLAS starts a spinning thread per further CPU when NumPy is imported; a
    worker never calls BLAS, so its threads are its own: the main (compute) thread and the
    reader, nothing else, after a sample counted with NumPy. Started as ``mcpi`` starts its
    own, naming this process (``MCPI_KILLED_WITH``, from the thread that lasts as long as
    it): a worker whose multi-threaded parent says nothing has a third, which waits for
    that parent's exit (``mcpi_worker.boot.arm_parent_death``)."""
    worker = WorkerUnderTest(env={"MCPI_NUMPY_IMPL": "numpy", constants.KILLED_WITH_PARENT: str(os.getpid())})
    try:
        worker.handshake()
        worker.send(Sample(id=1, seed=1, stream=0, points=1 << 20, kernel="numpy"))
        result = worker.receive()
        assert isinstance(result, Result) and result.implementation == "numpy"
        assert os_threads(worker.pid) == 2
    finally:
        worker.close_stdin()
        assert worker.wait() == 0


def numpy_mapped(pid: int) -> bool:
    """Whether NumPy's core extension is loaded in process ``pid`` (its memory map)."""
    with open(f"/proc/{pid}/maps") as maps:
        return "_multiarray_umath" in maps.read()


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads the worker's memory map in /proc")
@pytest.mark.parametrize("hint", ["1000", None])
def test_a_worker_told_of_a_small_run_at_its_start_imports_numpy_before_its_first_request(hint: str | None) -> None:
    """``mcpi estimate``'s early workers get the hello's size hint in their environment
    (``MCPI_EXPECTED_POINTS``): told of a run whose samples count with NumPy, a worker
    imports it while it waits for its first request, which then finds it there (a tiny
    run's first sample used to pay the whole import after its request came). Without the
    hint, nothing is imported before a request asks for it."""
    env = {"MCPI_NUMPY_IMPL": "auto", **({} if hint is None else {"MCPI_EXPECTED_POINTS": hint})}
    worker = WorkerUnderTest(env=env)
    try:
        worker.handshake()  # a hello without a hint: the environment's is the only one
        if hint is None:
            assert not numpy_mapped(worker.pid)
        else:
            deadline = time.monotonic() + 120  # a bound against a hang, not a claim of speed
            while not numpy_mapped(worker.pid):
                assert time.monotonic() < deadline, "NumPy was never imported before the first request"
                time.sleep(0.01)
        worker.send(Sample(id=1, seed=1, stream=0, points=1000, kernel="numpy"))
        result = worker.receive()
        assert isinstance(result, Result) and result.implementation == "numpy"
        assert result.inside == count_numpy(1, 0, 1000)
    finally:
        worker.close_stdin()
        assert worker.wait() == 0


@pytest.mark.parametrize("hint", ["9" * 5000, "1e9", "-1", " 7"])
def test_a_worker_ignores_an_environment_hint_that_is_not_a_uint64s_digits(hint: str) -> None:
    """``MCPI_EXPECTED_POINTS`` is acted on only as a uint64's decimal digits. A hint of
    thousands of digits made the worker's start end in ``int()``'s ValueError (past 4300
    digits), a traceback and no ``welcome``; now it is ignored as any other bad value."""
    worker = WorkerUnderTest(env={"MCPI_EXPECTED_POINTS": hint})
    try:
        worker.handshake()
        worker.send(Sample(id=1, seed=1, stream=0, points=1000, kernel="numpy"))
        result = worker.receive()
        assert isinstance(result, Result) and result.inside == count_numpy(1, 0, 1000)
    finally:
        worker.close_stdin()
        assert worker.wait() == 0
    assert "Traceback" not in worker.stderr_text()
