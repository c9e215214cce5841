"""The functions executor-based approaches ship to their workers.

They live in their own small module, at top level, because ``ProcessPoolExecutor``,
trio-parallel and anyio pickle a function *by reference*: the worker process imports
this module to find it, so it must be importable and cheap to import.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable

from mcpi_worker.exit_with import exit_with
from mcpi_worker.kernels import KERNELS


def count_chunk(kernel: str, seed: int, stream: int, points: int) -> int:
    """The chunk's ``inside`` count: the very function ``mcpi-worker`` runs for a sample."""
    return KERNELS[kernel](seed, stream, points, _never_stop)


def _never_stop() -> bool:
    return False  # executors have no cooperative cancellation to offer a kernel


def noop() -> None:
    """A task that does nothing: what is left of its round trip is pure overhead."""


def noop_of(_item: object) -> None:
    """``noop`` for the APIs that map a function over items (``imap_unordered``)."""


def initializer() -> Callable[[], None]:
    """The initializer for a pool this process is about to start (every pool of
    ``mcpi bench``): ``start_worker`` with this process as the owner its workers die
    with. A ``partial`` of a top-level function, so pools that pickle their
    initializer (loky, trio-parallel) can ship it.

    Also makes this process fork with Ctrl-C held back (``_forks_hold_ctrl_c``)."""
    _forks_hold_ctrl_c()
    return functools.partial(start_worker, os.getpid())


@functools.cache
def _forks_hold_ctrl_c() -> None:
    """From now on, each fork of this process holds SIGINT back in the forking thread,
    and so in the child, which starts with it blocked; ``start_worker`` ignores it and
    then lets it through. A forked worker is in the command's process group, and a
    Ctrl-C that reached it before its initializer ran raised ``KeyboardInterrupt`` in
    the worker: a traceback on the terminal, and a pool broken under the command,
    which then reported a failure rather than the interruption. The parent lets it
    through again as soon as the fork is done, and hears it then.

    The hooks are ``partial`` objects of builtins, which run no Python line: a signal
    handler cannot run inside them (``cli.signals`` sends a Ctrl-C dropped in a hook
    again). They stay for the process's life (Python cannot remove an at-fork hook): a
    child forked later by something other than a pool also starts with SIGINT blocked,
    which ``mcpi bench`` does not do (its other children are started by ``subprocess``,
    which runs no at-fork hook)."""
    if hasattr(os, "register_at_fork") and hasattr(signal, "pthread_sigmask"):
        ctrl_c = {signal.SIGINT}
        os.register_at_fork(
            before=functools.partial(signal.pthread_sigmask, signal.SIG_BLOCK, ctrl_c),
            after_in_parent=functools.partial(signal.pthread_sigmask, signal.SIG_UNBLOCK, ctrl_c),
        )


def start_worker(owner: int) -> None:
    """Run first in each pool worker: ignore Ctrl-C, and die with ``owner`` (Linux).

    Ctrl-C in a terminal goes to the whole foreground process group, and a forked pool
    worker is in ours. Without this each worker prints its own ``KeyboardInterrupt``
    traceback while ``mcpi bench`` stops them; with it, the command alone hears Ctrl-C
    and closes its pools, which ends their workers. SIGTERM and SIGHUP end a worker
    as they end any process: a forked worker had the command's handlers for them,
    which turn them into a Ctrl-C (``cli.signals``), that the worker ignores or raises
    as a traceback, and a pool's ``terminate`` (SIGTERM) did not end it.

    A command that cannot close its pools (SIGKILLed) left their workers running: a
    ``ProcessPoolExecutor`` or ``multiprocessing.Pool`` worker waits on a queue whose
    write end every forked sibling holds too, so it never sees end of file, and it
    keeps the command's stdout and stderr open, so whoever waits for those to close
    waits forever. So each worker ends itself when ``owner`` has exited
    (``_exit_with``): its parent for a forked worker, its parent's parent under a
    fork server, and the one process that outlives every thread a pool starts its
    workers from (pebble's and trio-parallel's threads).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)  # not the command's handlers, forked with it
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held since the fork: ignored now
    if sys.platform.startswith("linux"):
        _exit_with(owner)
    # Elsewhere no pidfd: the pools' own shutdown is all there is.


def _exit_with(owner: int) -> None:
    """End this process with ``os._exit(0)`` once process ``owner`` has exited
    (``mcpi_worker.exit_with``: a daemon thread waiting on ``owner``'s pidfd).

    Not a parent-death signal with a handler, as before: a worker blocked on its pool's
    queue lock, which a sibling killed with the command had held, was left for good
    (in CI and beside busy loops), its handler pending for a main thread that never ran
    Python again.

    Where pidfds are refused or this Python has no ``os.pidfd_open``, nothing is
    armed: the pools' own shutdown is all there is, as elsewhere, rather than an
    initializer that raises and breaks every pool."""
    exit_with(owner, name="mcpi-bench-exit-with-owner")
