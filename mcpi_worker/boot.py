"""``mcpi-worker`` and ``python -m mcpi_worker`` start here: the parent-death backstop
first, everything else after.

A worker notices its coordinator's death by stdin EOF, but only once it serves, and
it gets there only after importing NumPy and the protocol: CPU-bound work
that takes many seconds when a whole fleet starts on a few cores. A coordinator
SIGKILLed meanwhile left every starting worker running (``benchmarks/fleet.py
cleanup`` kills a coordinator during its fleet's start-up and measures what is
left). So this module, which imports nothing but the standard library's
``os``, ``signal`` and ``ctypes`` (and ``exit_with``'s ``threading`` and ``select`` when
it watches the parent with a thread, below), asks the kernel for the parent-death signal
before the first heavy import, and the signal is acted on wherever the main thread is: in
an import, in argument parsing, or serving.

Which signal (protocol.md §10.4). Linux sends it when the parent *thread* that spawned
us exits, not the parent process. SIGKILL, which ends a worker even when someone has
stopped it (SIGSTOP: any other signal waits for a SIGCONT that never comes once the
coordinator is gone), is asked for when that thread lasts as long as its process:

- the spawner says so, for only it knows which of its threads spawned us: it asked for
  SIGKILL itself, between its fork and our exec (the death signal survives ``exec``), or
  it named itself in ``MCPI_KILLED_WITH`` (``constants.KILLED_WITH_PARENT``) and is our
  parent. ``mcpi`` spawns its own workers with the second (it costs no fork) and every
  other local command (the first process of a ``--worker-cmd``) with the first, from the
  thread that runs the pool (``mcpi_coordinator.launch.early.spawn``); or
- our parent has a single thread (a shell, ``timeout``, ``sshd``: a launcher between the
  coordinator and us), which is then the one that spawned us.

Otherwise (a multi-threaded parent that did not ask: Trio's ``open_process`` spawns from
a cached thread that retires after 10 idle seconds) no signal: a thread of the worker's
own waits for the parent *process* to exit, on its pidfd (``mcpi_worker.exit_with``).
Not a handler of a signal, as before: Linux signals a child at each re-parenting (to
another thread of the dying parent, then to init), and a second signal that came while
the first's handler ran was left for the main thread's next line of Python, which a main
thread waiting in C (``sem_wait`` on its work queue) never ran; the worker outlived its
parent whenever someone else held its stdin open. Only where pidfds are unavailable (Linux
before 5.3, a Python without ``os.pidfd_open``) is the signal SIGUSR1, whose handler
checks whether the parent process is really gone (we were re-parented) and ignores the
signal otherwise.

When the parent really is gone, nobody reads anything the worker could still say, so
it leaves with ``os._exit(0)``: no unwinding, no interpreter finalization. On a
2-core machine with hundreds of workers, the CPU each one's finalization costs with
NumPy loaded would add up to seconds before the last one went (``benchmarks/fleet.py
cleanup`` measures how long a fleet takes to go).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # built in; no stub in typeshed (signal wraps it)

# Only what the interpreter has loaded anyway (and ctypes, below, and threading and select
# for a parent that may have spawned us from a passing thread): no dataclasses, no typing
# at run time, whose import alone is a noticeable part of the window this module closes.
import os


def leave_ctrl_c_to_the_owner() -> None:
    """Ignore SIGINT when stdin is not a terminal, from the very start.

    Then a program owns our stdin and our lifetime, and ends it with the end of our
    input, ``shutdown`` or SIGTERM; Ctrl-C in its terminal reaches our whole process
    group, and the coordinator decides what it means, not us. Set here, before the
    first heavy import: a SIGINT that came while the worker still imported argparse,
    structlog or NumPy printed a ``KeyboardInterrupt`` traceback and ended it, where
    the same SIGINT a moment later was ignored. Typed in a terminal, the worker keeps
    Python's Ctrl-C (it says what it is and exits 2 anyway). Called as this module is
    imported, which only the worker's ways in do (``__main__`` and the console script):
    what is left unguarded is the interpreter's own start (and ``site``'s), the console
    script's lines and ``mcpi_worker/__init__.py``. Done before this module imports
    anything the interpreter has not loaded already: ``signal``'s import (it builds its
    enums) was a noticeable part of that window; ``_signal`` is built in."""
    if not os.isatty(0):
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)


leave_ctrl_c_to_the_owner()

import signal  # noqa: E402  # after SIGINT is settled (above)
import sys  # noqa: E402
from functools import cache  # noqa: E402

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy knows the name
if TYPE_CHECKING:
    from typing import Final, NoReturn

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PARENT_DEATH_SIGNAL = signal.SIGUSR1
"""The death signal asked for when the parent may have spawned us from a passing thread."""
KILLED_WITH_PARENT = "MCPI_KILLED_WITH"
"""``mcpi_worker.constants.KILLED_WITH_PARENT``, spelled out: that module imports ``typing``."""


class Lifeline:
    """The armed backstop: the parent we watch, and why the kernel could not be asked
    (None when it was), for the worker to log once logging is configured."""

    __slots__ = ("parent_pid", "unavailable")

    def __init__(self, parent_pid: int, unavailable: str | None) -> None:
        self.parent_pid = parent_pid
        self.unavailable = unavailable


@cache
def arm_parent_death() -> Lifeline:
    """Exit when the process that started us dies, even if someone else keeps our
    stdin open. Once per process: the first call decides which parent is watched."""
    parent_pid = os.getppid()

    def on_parent_death_signal(_signum: int, _frame: object) -> None:
        if os.getppid() != parent_pid:
            os._exit(0)
        # The thread that spawned us ended but our parent process lives on: ignore.

    unavailable: str | None = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            asked = ctypes.c_int(0)
            if libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(asked), 0, 0, 0) != 0:
                asked.value = 0
            if asked.value != signal.SIGKILL:  # else: our spawner asked for it, and keeps it
                named = os.environ.get(KILLED_WITH_PARENT) == str(parent_pid)
                wanted: int = signal.SIGKILL if named or _single_threaded(parent_pid) else PARENT_DEATH_SIGNAL
                if wanted == PARENT_DEATH_SIGNAL:
                    from mcpi_worker.exit_with import exit_with

                    if exit_with(parent_pid, name="mcpi-worker-exit-with-parent"):
                        wanted = 0  # no signal: the thread watches the parent process itself
                    else:
                        signal.signal(PARENT_DEATH_SIGNAL, on_parent_death_signal)
                if libc.prctl(PR_SET_PDEATHSIG, int(wanted), 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        except (OSError, AttributeError, ImportError) as exc:
            unavailable = str(exc)
    else:
        unavailable = f"no parent-death signal on {sys.platform}; stdin EOF only"
    # The parent may have died between our start and prctl; the signal would not come.
    if os.getppid() != parent_pid:
        os._exit(0)
    return Lifeline(parent_pid, unavailable)


def _single_threaded(pid: int) -> bool:
    """Whether process ``pid`` has one thread now (``/proc/PID/task``). A child is
    re-parented to another thread of its parent when the thread that spawned it exits,
    so with one thread left that thread is our parent, and it ends only with its
    process. False when it cannot be told."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) == 1
    except OSError:
        return False



BLAS_THREADS_VARIABLE: Final = "OPENBLAS_NUM_THREADS"


def one_blas_thread() -> None:
    """Keep the BLAS that NumPy loads from starting a pool of threads: unless the
    environment says otherwise (``OPENBLAS_NUM_THREADS``), one thread, the caller's.

    NumPy's wheels link OpenBLAS into NumPy's core, and loading it starts one thread
    per further CPU, each of which spins waiting for work for a while before it sleeps
    (``benchmarks/worker_cpu.py`` measures what a worker spends beside its counting).
    A worker never multiplies a matrix; its CPUs are for its kernels, and on a machine
    where every core counts (two workers on two cores) those spinning threads took CPU
    time from the other worker's count. Read by OpenBLAS when NumPy is first imported,
    so set before anything imports it; child processes (the cache warmer) inherit it."""
    os.environ.setdefault(BLAS_THREADS_VARIABLE, "1")


def main() -> NoReturn:
    """The ``mcpi-worker`` command: arm the backstop, then import and run the worker.

    A worker that has served its connection leaves with ``os._exit`` too, once its
    exit handlers have run (the kernels' waits for a background load among them) and
    its output is flushed. It writes the protocol with ``os.write`` and has only daemon
    threads, so the rest of finalization, tearing every module down, would only cost
    CPU time, more with NumPy loaded (``benchmarks/fleet.py cleanup`` measures a
    fleet's stop), when a whole fleet is told to stop at once.
    """
    from mcpi_worker.standard_fds import fill_closed

    fill_closed()  # before anything can take a missing one's number (and the protocol's fd 1)
    # No cyclic collection while the worker imports what it runs (ctypes for the backstop
    # first), up to the preparation of its kernels (``collector``: on the way to its first
    # count).
    from mcpi_worker import collector

    collector.hold()
    lifeline = arm_parent_death()  # before any wait: a coordinator that dies meanwhile ends us
    # Workers started together take turns at their imports (``start_turn``): the one
    # before us is still starting beside our coordinator's own start.
    from mcpi_worker.start_turn import wait_for_turn

    turn = wait_for_turn()
    one_blas_thread()
    # structlog loads rich, when it is installed, for pretty console output and
    # tracebacks: a noticeable part of a start's CPU (``benchmarks/fleet.py startup``
    # times whole starts), for a process that writes JSON lines.
    # An entry of None makes ``import rich`` fail, so structlog takes its plain path.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    from mcpi_worker.main import main as run_worker

    code = run_worker(
        parent_death_unavailable=lifeline.unavailable, imports_done=collector.release, started=turn.pass_on
    )
    from mcpi_worker.leaving import leave

    leave(code)
