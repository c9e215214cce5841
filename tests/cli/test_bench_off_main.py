"""``bench.off_main``: an approach driven from a helper thread, the main thread waiting for
it or for a stop signal, never inside a pool's library; and the signals of a pool's
forked worker (``bench.tasks.start_worker``). The command's end to end check is
``tests/cli/test_cli_ends.py::test_a_stop_while_a_bench_pool_starts_is_heard``; here the
contract itself, with signals this process sends itself and events, never the clock."""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading
from typing import Any

import psutil
import pytest

from mcpi_coordinator.bench import tasks
from mcpi_coordinator.bench.off_main import Interrupted, Stopped, off_main_thread, on_stop
from mcpi_coordinator.cli import signals

PATIENCE_S = 120
"""A bound on a wait for an event that comes at once unless the code under test is broken."""


def test_the_result_and_the_thread() -> None:
    @off_main_thread
    def work(a: int, *, b: int) -> tuple[int, bool]:
        return a + b, threading.current_thread() is threading.main_thread()

    assert work(1, b=2) == (3, False)


def test_what_the_work_raises_is_raised_in_the_caller() -> None:
    @off_main_thread
    def work() -> None:
        raise ValueError("broken pool")

    with pytest.raises(ValueError, match="broken pool"):
        work()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_runs_the_stop_actions_and_raises_interrupted(signum: int) -> None:
    """The signal is heard while the work waits on its pool: the main thread shuts the
    pool down (the stop action), which is what wakes the work, and raises ``Interrupted``
    naming the signal. The handlers in force before are back afterwards."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    shut_down = threading.Event()
    woke = threading.Event()

    @off_main_thread
    def work() -> None:
        with on_stop(shut_down.set):
            os.kill(os.getpid(), signum)
            if shut_down.wait(PATIENCE_S):
                woke.set()

    with pytest.raises(Interrupted) as caught:
        work()
    assert caught.value.signum == signum
    assert isinstance(caught.value, KeyboardInterrupt)  # what the command already handles
    assert shut_down.is_set()
    assert woke.wait(PATIENCE_S)
    assert {number: signal.getsignal(number) for number in handlers} == handlers


def test_a_pool_registered_after_the_stop_is_shut_down_there_and_then() -> None:
    first_stopped = threading.Event()
    late: list[str] = []
    outcome: list[BaseException] = []
    finished = threading.Event()

    @off_main_thread
    def work() -> None:
        try:
            with on_stop(first_stopped.set):
                os.kill(os.getpid(), signal.SIGINT)
                assert first_stopped.wait(PATIENCE_S)
            with on_stop(lambda: late.append("shut down")):
                late.append("ran a task")  # never: the pool is shut down as it is registered
        except BaseException as exc:
            outcome.append(exc)
        finally:
            finished.set()

    with pytest.raises(Interrupted):
        work()
    assert finished.wait(PATIENCE_S)
    assert late == ["shut down"]
    assert len(outcome) == 1 and isinstance(outcome[0], Stopped)


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # as a pool's terminate() does to its worker


def test_a_signal_to_a_forked_worker_is_not_the_run_s() -> None:
    """A child forked by the helper (a pool's worker) had the parent's signal wakeup
    pipe: its SIGTERM was written there, and the run stopped as if the command had
    been sent it (``mcpi bench overhead`` ended 'terminated' when a pool closed)."""

    @off_main_thread
    def work() -> int | None:
        child = multiprocessing.get_context("fork").Process(target=_terminate_self)
        child.start()
        child.join()
        return child.exitcode

    assert work() == -signal.SIGTERM  # it ended the child, and the run went on


def test_outside_a_run_on_stop_does_nothing_and_a_nested_run_is_a_plain_call() -> None:
    called: list[str] = []
    with on_stop(lambda: called.append("stop")):
        pass
    assert called == []

    @off_main_thread
    def outer() -> tuple[str, str]:
        @off_main_thread
        def where() -> str:
            return threading.current_thread().name

        return threading.current_thread().name, where()

    here, there = outer()
    assert here == there != threading.main_thread().name  # the inner call ran in the helper itself


def _a_pool_worker(owner: int, ready: Any) -> None:
    tasks.start_worker(owner)
    ready.set()
    signal.pause()  # until a signal ends it


def test_sigterm_ends_a_forked_pool_worker_quietly() -> None:
    """A worker forked while the command ran had its SIGTERM handler, which turns it
    into a Ctrl-C: ignored in a worker (its pool's ``terminate`` did not end it), or,
    since SIGTERM raises where Ctrl-C is ignored (``cli.signals``), a
    ``KeyboardInterrupt`` traceback. ``start_worker`` gives SIGTERM back its default."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    with signals.handled():
        worker = context.Process(target=_a_pool_worker, args=(os.getpid(), ready))
        worker.start()
        try:
            assert ready.wait(PATIENCE_S)
            os.kill(worker.pid or 0, signal.SIGTERM)
            worker.join(PATIENCE_S)
        finally:
            if worker.exitcode is None:
                worker.kill()
                worker.join()
    assert worker.exitcode == -signal.SIGTERM


OWNER_OF_A_STUCK_WORKER = """
import os, signal
from mcpi_coordinator.bench import tasks

owner = os.getpid()
never_read, never_written = os.pipe()
worker = os.fork()
if worker == 0:
    tasks.start_worker(owner)
    # The main thread never runs another line of Python: as a worker's does when a signal
    # handler is left pending while it waits in C (sem_wait on its pool's queue lock).
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals))
    os.read(never_read, 1)  # we hold the write end too: no end of file either
    os._exit(3)
print(worker, flush=True)
signal.pause()
"""


def test_a_pool_worker_whose_main_thread_is_stuck_in_c_dies_with_its_owner() -> None:
    """A ``ProcessPoolExecutor`` worker outlived its SIGKILLed command (1 run in ~30 of
    ``tests/cli/test_cli_ends.py``'s test beside two busy loops): its parent-death
    signal's handler was left pending while the main thread waited on its queue's lock,
    held for good by a sibling killed with the command. The worker now leaves from a
    thread of its own once the owner's pidfd says it has exited."""
    _sigkill_the_owner_and_wait_for_its_worker(OWNER_OF_A_STUCK_WORKER)


def _sigkill_the_owner_and_wait_for_its_worker(owner_script: str) -> None:
    """Run ``owner_script`` (it prints its worker's pid), SIGKILL it, and wait for the
    worker to be gone."""
    owner = subprocess.Popen(
        [sys.executable, "-c", owner_script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    worker: psutil.Process | None = None
    try:
        assert owner.stdout is not None and owner.stderr is not None
        line = owner.stdout.readline()
        assert line, owner.stderr.read()
        worker = psutil.Process(int(line))
        owner.kill()
        owner.wait()
        _, left = psutil.wait_procs([worker], timeout=PATIENCE_S)
        assert left == [], "the worker outlived its owner"
    finally:
        if owner.poll() is None:
            owner.kill()
        if worker is not None and worker.is_running():
            worker.kill()
        for stream in (owner.stdout, owner.stderr):
            if stream is not None:
                stream.close()


OWNER_FORKING_FROM_A_THREAD = """
import os, threading
from mcpi_coordinator.bench import tasks

owner = os.getpid()
to_worker_read, to_worker = os.pipe()
from_worker, from_worker_write = os.pipe()
forked = []

def fork_a_worker():
    worker = os.fork()
    if worker == 0:
        tasks.start_worker(owner)
        while os.read(to_worker_read, 1):
            os.write(from_worker_write, b"pong")
        os._exit(3)
    forked.append(worker)

thread = threading.Thread(target=fork_a_worker)
thread.start()
thread.join()  # the thread that forked the worker has ended
os.write(to_worker, b"?")
assert os.read(from_worker, 4) == b"pong"
print(forked[0], flush=True)
os._exit(0)  # its pipes' ends stay open in the worker: no end of file tells it
"""


def test_a_pool_worker_forked_from_a_passing_thread_lives_until_its_owner_exits() -> None:
    """pebble and trio-parallel start workers from threads that end before their
    process: the worker answers after that thread has gone, and goes once the owner
    process itself exits (normally, here)."""
    owner = subprocess.run(
        [sys.executable, "-c", OWNER_FORKING_FROM_A_THREAD], capture_output=True, text=True, timeout=PATIENCE_S
    )
    assert owner.returncode == 0, owner.stderr
    try:
        worker = psutil.Process(int(owner.stdout))
    except psutil.NoSuchProcess:
        return  # already gone, as it should be
    _, left = psutil.wait_procs([worker], timeout=PATIENCE_S)
    if left:
        worker.kill()
    assert left == [], "the worker outlived its owner"


KILL_A_LOKY_WORKER = """
import multiprocessing, os
import psutil
from joblib.externals import loky
from mcpi_coordinator.bench import tasks
from mcpi_coordinator.bench.off_main import kill_pool_workers

executor = loky.get_reusable_executor(max_workers=1, initializer=tasks.initializer())
assert executor.submit(os.getpid).result(timeout=120) != os.getpid()  # a worker runs
workers = multiprocessing.active_children()
print(*[worker.pid for worker in workers], flush=True)
kill_pool_workers()
# What is left of each: nothing, or a zombie (the executor's own thread may be the one
# that reaps it, also between two looks: one look; read before the executor's shutdown,
# which would kill it anyway).
def left(pid):
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "gone"
print(*[left(worker.pid) for worker in workers])
executor.shutdown(wait=True, kill_workers=True)
"""


def test_kill_pool_workers_kills_a_loky_worker() -> None:
    """loky's workers (joblib's pools) have a ``Popen`` without ``kill``: a Ctrl-C while
    ``mcpi bench overhead`` ran them ended in an ``AttributeError`` traceback (CI's
    docs example of ``mcpi bench overhead``, stopped after its budget). In a fresh
    interpreter: loky's workers copy the logging set-up of the process that starts
    them, which other tests in this one change."""
    done = subprocess.run(
        [sys.executable, "-c", KILL_A_LOKY_WORKER], capture_output=True, text=True, timeout=PATIENCE_S
    )
    assert done.returncode == 0, done.stderr
    pids, left = (line.split() for line in done.stdout.splitlines())
    assert pids and set(left) <= {"gone", psutil.STATUS_ZOMBIE}, left


A_PYTHON_WITHOUT_PIDFD_OPEN = """
import os, threading
del os.pidfd_open  # conda's Pythons, built against older kernel headers, have none
from mcpi_coordinator.bench import tasks

tasks.start_worker(os.getpid())
print(sorted(thread.name for thread in threading.enumerate()))
"""


def test_a_pool_worker_on_a_python_without_pidfd_open_starts_without_the_backstop() -> None:
    """``os.pidfd_open`` is missing from some Linux Pythons (conda's: trio's issue 2855):
    the initializer then arms nothing, as where the kernel refuses pidfds, instead of
    raising ``AttributeError`` in every worker of every pool (a broken pool)."""
    done = subprocess.run(
        [sys.executable, "-c", A_PYTHON_WITHOUT_PIDFD_OPEN], capture_output=True, text=True, timeout=PATIENCE_S
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['MainThread']"


def test_a_pool_worker_whose_pidfd_is_numbered_above_1024_dies_with_its_owner() -> None:
    """A worker forked by a command that holds over a thousand descriptors (a large pool's
    pipes, where the soft limit is above 1,024, as in many containers) gets its pidfd
    numbered above them: ``select`` refused it (``ValueError`` in the waiting thread, which
    died with a traceback), and the worker outlived its SIGKILLed owner."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.fail(f"this test needs an open-file limit of 1,200 descriptors (hard limit {hard})")
    crowded = (
        f"""
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (max({soft}, 1200), {hard}))
import os
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
assert max(held) > 1024
"""
        + OWNER_OF_A_STUCK_WORKER
    )
    _sigkill_the_owner_and_wait_for_its_worker(crowded)
