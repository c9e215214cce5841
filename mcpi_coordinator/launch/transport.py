"""What the pool needs of one worker process, so fakes can stand in for real ones.

``trio.Process`` satisfies ``WorkerProcess`` as it is. Tests and the fake-worker kit
(``mcpi_coordinator.testing``) provide in-process objects with the same shape, wired
over Trio memory streams; they reach the pool through its ``launcher`` parameter,
never by monkeypatching.
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
    def returncode(self) -> int | None: ...

    stdin: trio.abc.SendStream | None
    stdout: trio.abc.ReceiveStream | None
    stderr: trio.abc.ReceiveStream | None

    async def wait(self) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


Launcher = Callable[[int], Awaitable[WorkerProcess]]
"""Starts the worker for pool slot ``index`` (0-based) and returns it, pipes open.

The pool calls it again with the same index to replace a worker that died, so a
launcher may choose the command (local, ssh to a host, ...) by index.
"""
