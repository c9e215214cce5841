"""What the pool needs of one worker process, so fakes and other launchers can stand in.

A ``WorkerProcess`` is a running worker: its three pipes, and the means to watch, stop
and reap it. ``launch.local.SessionProcess`` is the real one (a local process in a
session of its own, also what ssh and srun launchers return); the fake-worker kit
(``mcpi_coordinator.testing``) provides in-process objects with the same shape, wired
over OS pipes; they reach the pool through its ``launcher`` parameter, never by
monkeypatching.

Exit and reaping are separate on purpose. ``wait_exited`` returns once the process has
exited but leaves it unreaped (a zombie), so its process group id cannot be reused
yet and ``kill`` still reaches whatever it left behind in that group (a child holding
its pipes); ``wait`` reaps it, after which nothing may be signalled by that number.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import trio


class WorkerProcess(Protocol):
    """One running worker: its three pipes and the means to stop and reap it."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (``wait``): negative -N for "killed by signal N"."""

    stdin: trio.abc.SendStream | None
    stdout: trio.abc.ReceiveStream | None
    stderr: trio.abc.ReceiveStream | None

    async def wait_exited(self) -> int:
        """Wait until the process has exited; return its exit status, without reaping it."""

    async def wait(self) -> int:
        """Wait until the process has exited, reap it, and return its exit status."""

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM to the process itself, so a launcher such as ``srun``
        or ``ssh`` can end its remote side in order). No effect once it has exited."""

    def kill(self) -> None:
        """Stop it and everything it started (SIGKILL to its process group). Also after
        it has exited, until it is reaped: that ends what it left behind."""


class StartLimiter(Protocol):
    """What bounds the workers between launch and welcome at once: the part of
    ``trio.CapacityLimiter`` the pool uses, so that a bound made of several limiters
    (an ssh host's and every host's together: ``launch.remote``) can stand in for one.
    The pool holds one token per starting slot, the slot itself the borrower."""

    @property
    def total_tokens(self) -> int | float: ...

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        """Wait for a token (cancellable: then nothing is held)."""

    def release_on_behalf_of(self, borrower: object) -> None:
        """Give back what ``acquire_on_behalf_of`` took for ``borrower``."""


Launcher = Callable[[int], Awaitable[WorkerProcess]]
"""Starts the worker for pool slot ``index`` (0-based) and returns it, pipes open.

The pool calls it again with the same index to replace a worker that died, so a
launcher may choose the command (local, ssh to a host, ...) by index.
"""
