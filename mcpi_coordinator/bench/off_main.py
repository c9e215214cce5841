"""Pools of the standard library driven from a thread of their own, so that Ctrl-C never
lands inside them.

Python runs a signal's handler in the main thread, at whatever line it is on. Driven
from the main thread, a ``concurrent.futures`` executor or a ``multiprocessing.Pool``
can be on one of its own lines holding one of its own locks when Ctrl-C (or SIGTERM,
which ``mcpi`` turns into it) comes: the ``KeyboardInterrupt`` leaves that lock held,
and the executor's manager thread then waits on it for good, and so does the command
(py-spy showed ``ProcessPoolExecutor``'s work-id queue lock, while its pool started).
No code of the caller's can undo that afterwards.

So ``off_main_thread`` runs such an approach in a helper thread and keeps the main
thread out of every library: it waits in ``select`` on two pipes, one that the helper
writes when it is done and one that Python's C-level signal handler writes the signal's
number to (``signal.set_wakeup_fd``), and for the run's length the Python-level handlers
of the stop signals do nothing at all, so no ``KeyboardInterrupt`` is raised anywhere.
On a stop signal the main thread runs the stop actions the approach registered
(``on_stop``: shut its pool down without waiting, dropping the queued work), kills
every worker process ``multiprocessing`` started and reaps it, waits for the pools'
own threads to end, and only then raises ``Interrupted`` from its own line. It does
not wait for the helper: a
``multiprocessing.Pool`` terminated under a waiting ``get`` never wakes it. The helper
is a daemon thread, and whatever it forks after the stop is ended by the library's own
exit handlers and, once the command has exited, by the thread ``tasks.start_worker``
leaves in each pool worker (it waits on the command's pidfd: no parent-death signal).
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar, copy_context
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

STOP_SIGNALS: Final[frozenset[int]] = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
"""The signals that stop ``mcpi`` in an orderly way (``cli.signals.STOP_SIGNALS``)."""

DONE: Final = b"\0"
"""What the helper writes when it has finished: no signal has the number 0."""

P = ParamSpec("P")
T = TypeVar("T")


class Interrupted(KeyboardInterrupt):
    """A stop signal came while an approach ran off the main thread; its pools were shut
    down and their workers killed. ``signum`` is the first stop signal that came."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Stopped(Exception):
    """Raised in the helper by ``on_stop`` for a pool registered after the stop: the
    pool has been shut down there and then. The helper's outcome is not read any more."""


class _Stop:
    """The stop actions of one run, and whether it has been stopped (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: list[Callable[[], object]] = []
        self._stopped = False

    def add(self, action: Callable[[], object]) -> None:
        """Register ``action``; run it at once and raise ``Stopped`` if the run has stopped."""
        with self._lock:
            stopped = self._stopped
            if not stopped:
                self._actions.append(action)
        if stopped:
            action()
            raise Stopped("the run was stopped before this pool was registered")

    def remove(self, action: Callable[[], object]) -> None:
        with self._lock:
            if action in self._actions:
                self._actions.remove(action)

    def stop(self) -> None:
        """Run every action registered (a failing one does not keep the others from
        running: each is a shutdown of a pool that may be broken already)."""
        with self._lock:
            self._stopped = True
            actions = list(self._actions)
        for action in actions:
            with contextlib.suppress(Exception):
                action()


_current: ContextVar[_Stop | None] = ContextVar("mcpi_bench_off_main_stop", default=None)


@contextlib.contextmanager
def on_stop(action: Callable[[], object]) -> Iterator[None]:
    """``action`` shuts the block's pool down without waiting for it, should the run
    that this thread serves be stopped while the block runs (the main thread calls it).
    Outside ``off_main_thread`` this does nothing. Raises ``Stopped`` (after running
    ``action``) if the run has already been stopped."""
    stop = _current.get()
    if stop is None:
        yield
        return
    stop.add(action)
    try:
        yield
    finally:
        stop.remove(action)


def off_main_thread(function: Callable[P, T]) -> Callable[P, T]:
    """``function`` run in a helper thread while the main thread waits for it or for a
    stop signal (the module's docstring says why and how). Called from any other thread,
    or from inside another such run, it is ``function`` itself.

    Raises what ``function`` raises, or ``Interrupted`` on a stop signal."""

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        if threading.current_thread() is not threading.main_thread() or _current.get() is not None:
            return function(*args, **kwargs)
        return _run(functools.partial(function, *args, **kwargs))

    return run


def _ignore(_signum: int, _frame: object) -> None:
    """A stop signal's Python-level handler during a run: nothing. Its C-level handler
    has written the signal's number to the wakeup pipe, which is how the main thread
    hears it, wherever the signal was delivered."""


_waking: list[int] = []
"""The wakeup pipe's write end while a run waits on it (one run at a time: the main
thread's), for ``_forget_the_run`` in a forked child."""


@functools.cache
def _children_forget_the_run() -> None:
    """From now on, a child forked while a run waits leaves its wakeup pipe alone."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_the_run)


def _forget_the_run() -> None:
    """In a child just forked (a pool's worker, forked by the helper): the signal wakeup
    fd is the process's, and the child had the parent's, so a SIGTERM that reached the
    worker (its pool's ``terminate``) was written to the parent's pipe, and the parent
    took it for its own and stopped. And SIGTERM and SIGHUP end the child as they end
    any process, before its initializer has run (``tasks.start_worker``, which does the
    same): with the run's ``_ignore`` it outlived a broken pool's ``terminate``, and the
    pool's manager thread waited for it. SIGINT is held back in the child until then
    (``tasks.initializer``)."""
    if _waking:
        signal.set_wakeup_fd(-1)
        _waking.clear()
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)


def _run(work: Callable[[], T]) -> T:
    _children_forget_the_run()
    stop = _Stop()
    returned: list[T] = []
    raised: list[BaseException] = []
    wake_read, wake_write = os.pipe()
    done_read, done_write = os.pipe()
    os.set_blocking(wake_write, False)  # signal.set_wakeup_fd's condition

    def helper() -> None:
        try:
            returned.append(work())
        except BaseException as exc:  # handed to the main thread, which raises it
            raised.append(exc)
        finally:
            with contextlib.suppress(OSError):  # the main thread has left: nobody reads
                os.write(done_write, DONE)
            os.close(done_write)

    context = copy_context()
    context.run(_current.set, stop)
    thread = threading.Thread(target=context.run, args=(helper,), name="mcpi-bench-pool", daemon=True)
    previous_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    _waking.append(wake_write)
    # A stop signal this process ignores (SIGINT, for a job a script put in the
    # background) stays ignored: it stops nothing here either.
    heard = [signum for signum in STOP_SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN]
    previous_handlers = {signum: signal.signal(signum, _ignore) for signum in heard}
    try:
        thread.start()
        stopped_by = _wait(wake_read, done_read)
        if stopped_by is not None:
            stop.stop()
            kill_pool_workers()
            _join_pool_threads()
            kill_pool_workers()  # any the helper forked meanwhile
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_wakeup)
        _waking.clear()
        for fd in (wake_read, wake_write, done_read):
            os.close(fd)
    if stopped_by is not None:
        raise Interrupted(stopped_by)
    if raised:
        raise raised[0]
    return returned[0]


def _wait(wake_read: int, done_read: int) -> int | None:
    """Wait for the helper to finish (None) or a stop signal (its number, the first)."""
    while True:
        ready, _, _ = select.select([wake_read, done_read], [], [])
        if wake_read in ready:
            numbers = os.read(wake_read, 512)
            stops = [number for number in numbers if number in STOP_SIGNALS]
            if stops:
                return stops[0]
        if done_read in ready:
            return None


def _join_pool_threads() -> None:
    """Wait for the threads that pools run and the interpreter joins at its exit (the
    non-daemon ones: an executor's manager thread, a thread pool's workers), now that
    their pools are shut down and their workers dead, which ends them (a thread pool's
    worker ends with the task it is running). Left to the exit, a process pool's
    manager thread could close its wake-up pipe while ``concurrent.futures``' exit
    handler wrote to it: Python 3.11 printed that error after the command's line. The
    helper is a daemon: it is not waited for (module docstring)."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()


def kill_pool_workers() -> None:
    """Kill and reap every worker process ``multiprocessing`` started (the standard
    library's pools, loky's, pebble's): a pool shut down without waiting leaves its
    running workers to finish their task, and the command ends now. A pool that started
    none left nothing to kill."""
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None:
        return
    workers = multiprocessing.active_children()
    for worker in workers:
        with contextlib.suppress(OSError, ValueError):  # gone already, or closed by its pool
            _kill(worker)
    for worker in workers:
        with contextlib.suppress(ValueError):
            worker.join()


def _kill(worker: BaseProcess) -> None:
    """SIGKILL ``worker``. Its ``kill`` method needs its start method's ``Popen`` to have
    one, and loky's (joblib's pools) has none: a Ctrl-C while ``mcpi bench overhead``
    ran joblib or loky ended in an ``AttributeError`` traceback and exit 1. Such a
    worker is signalled by its pid: a child of ours that ``active_children`` found
    unreaped a moment ago; were it reaped by its pool since, the pid would have to be
    taken by a new process within that moment to name another."""
    try:
        worker.kill()
    except AttributeError:
        if worker.pid is not None:
            os.kill(worker.pid, signal.SIGKILL)
