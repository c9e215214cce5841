"""A ``server.Worker`` serving on a thread of its own over OS pipes, for tests of the worker
loop itself (its reader thread, its spin, what it runs where) with a client in Trio."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from mcpi_coordinator.testing.client import WorkerClient
from mcpi_worker.server import Worker

TIMEOUT = 60.0  # seconds; a bound against a hang, reached only by a worker that stopped listening


class _Pipes:
    def __init__(self, stdin: trio.lowlevel.FdStream, stdout: trio.lowlevel.FdStream) -> None:
        self.stdin = stdin
        self.stdout = stdout


@asynccontextmanager
async def serving_over_pipes(make: Callable[[int, int], Worker]) -> AsyncIterator[WorkerClient]:
    """Yield a client of ``make(input_fd, output_fd)`` serving on a daemon thread; on leaving,
    close its input (EOF), join the thread (``AssertionError`` if it did not end within
    ``TIMEOUT``) and close the pipes. The client's calls are the caller's to bound."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    worker = make(in_r, out_w)
    serving = threading.Thread(target=worker.serve, daemon=True)
    serving.start()
    stdin, stdout = trio.lowlevel.FdStream(in_w), trio.lowlevel.FdStream(out_r)  # they own the fds
    try:
        yield WorkerClient(_Pipes(stdin, stdout))
    finally:
        await stdin.aclose()
        await trio.to_thread.run_sync(serving.join, TIMEOUT)
        await stdout.aclose()
        for fd in (in_r, out_w):
            os.close(fd)
    assert not serving.is_alive()
