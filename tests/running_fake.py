"""The in-process fake worker, started for a test that drives it by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from mcpi_coordinator.testing import FakeBehaviour, FakeWorkerProcess, start_fake_worker
from mcpi_coordinator.testing.client import StderrTail, WorkerClient


@asynccontextmanager
async def running_fake(
    behaviour: FakeBehaviour = FakeBehaviour(),  # noqa: B008 (frozen: one shared default is safe)
) -> AsyncIterator[tuple[FakeWorkerProcess, WorkerClient, StderrTail]]:
    """One running fake with a client and its stderr drained; killed at the end if
    still alive."""
    async with trio.open_nursery() as nursery:
        process = await start_fake_worker(nursery, behaviour)
        stderr = StderrTail()
        assert process.stderr is not None
        nursery.start_soon(stderr.drain, process.stderr)
        try:
            yield process, WorkerClient(process), stderr
        finally:
            process.kill()
