"""End this process when another one exits, from a thread of its own (Linux pidfds).

Shared by ``mcpi-worker`` (``boot.arm_parent_death``: a parent that may have spawned it
from a passing thread) and by ``mcpi bench``'s pool workers
(``mcpi_coordinator.bench.tasks.start_worker``: the command that owns their pool).

Why a thread, not a parent-death signal with a Python handler: Linux signals a child at
each re-parenting, to another thread of the dying parent first (a handler must ignore
that one: the parent process is the same) and then to init. When the second came while
the first's handler was still running, CPython left its handler for the main thread's
next line of Python, and a main thread back waiting in C (``sem_wait`` on a lock, a
``read``), which no further signal interrupted, never ran it: the process outlived its
parent for good (a bench pool worker of a SIGKILLed ``mcpi bench overhead``, in CI and
beside busy loops: ``tests/cli/test_bench_off_main.py -k stuck_in_c``). A thread that
exits the process does not depend on the main thread ever running Python again; nor does
a pidfd on a thread of the watched process that ends (a pidfd is the process's,
readable once its whole thread group has exited).

Imports only ``os``, ``select`` and ``threading``: ``mcpi-worker`` arms this before its
heavy imports.
"""

from __future__ import annotations

import os
import select
import threading

__all__ = ["exit_with"]


def exit_with(pid: int, *, name: str) -> bool:
    """End this process with ``os._exit(0)`` once process ``pid`` has exited: from a
    daemon thread called ``name`` that waits for ``pid``'s pidfd to become readable.

    Returns True when the thread is armed. Exits at once (``os._exit(0)``) when ``pid``
    has already gone: nobody is left to read what this process could still say.
    Returns False, arming nothing, where pidfds are refused (Linux before 5.3, a seccomp
    filter, a pid outside our namespace) or where this Python has no
    ``os.pidfd_open`` (built against older kernel headers, as conda's Pythons are:
    trio's issue 2855): the caller then keeps whatever else it has, rather than
    raising. A caller watching its parent checks ``os.getppid()`` after this returns:
    a parent that died just before ``pidfd_open`` has re-parented us by then, and its
    pid may already be another process's."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return False
    try:
        pidfd = pidfd_open(pid)
    except ProcessLookupError:
        os._exit(0)
    except OSError:
        return False
    threading.Thread(target=_exit_when_readable, args=(pidfd,), name=name, daemon=True).start()
    return True


def _exit_when_readable(pidfd: int) -> None:
    """A pidfd is readable once its process has exited (a zombie: the test of that is
    the kernel's ``thread_group_exited``), and stays so. Waited on with ``poll``, not
    ``select``, which refuses a descriptor numbered 1024 or more (``ValueError``): a
    process holding a thousand descriptors (a large pool's pipes, under a soft limit
    above 1,024) gets its pidfd above them."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.poll()
    os._exit(0)
