"""``connection.pipes``: a worker's OS pipes written and read without a scheduler pass per
frame. The connection's use of them is tested in tests/pool/test_worker_connection.py;
here their own contract, on real pipes, waiting on Trio's events, never the clock."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from mcpi_coordinator.connection.pipes import FdReceiver, pipe_fd, write_nowait

PATIENCE_S = 60.0
"""A bound on waits that end at once unless the code under test is broken."""


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe, its write end non-blocking as a worker's stdin is to the coordinator."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    yield read_end, write_end
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass  # a test closed it already


def _fill(fd: int) -> int:
    """Write to ``fd`` until the pipe is full; how much went in."""
    written = 0
    while (count := write_nowait(fd, b"x" * 65536)) > 0:
        written += count
    return written


def test_pipe_fd_knows_an_os_pipe_from_any_other_stream() -> None:
    read_end, write_end = os.pipe()
    stream = trio.lowlevel.FdStream(write_end)
    try:
        assert pipe_fd(stream) == stream.fileno()
    finally:
        os.close(read_end)
    send, receive = trio.testing.memory_stream_pair()
    assert pipe_fd(send) is None and pipe_fd(receive) is None


def test_write_nowait_writes_what_fits_and_then_nothing(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    assert write_nowait(write_end, b"frame") == 5
    capacity = _fill(write_end) + 5
    assert write_nowait(write_end, b"more") == 0  # full: nothing written, nothing raised
    os.read(read_end, 4096)  # a page of room
    assert 0 < write_nowait(write_end, b"y" * 8192) <= 4096  # what fits of it
    assert capacity > 0


def test_write_nowait_to_a_pipe_whose_reader_left_mid_write_raises_broken_pipe(pipe: tuple[int, int]) -> None:
    """The worker died with a frame half written: the rest of it raises (Python ignores
    SIGPIPE), for ``failures`` to word, and is not taken for a full pipe."""
    read_end, write_end = pipe
    _fill(write_end)
    os.read(read_end, 100)  # the worker read part of it ...
    os.close(read_end)  # ... and died
    with pytest.raises(BrokenPipeError):
        write_nowait(write_end, b"the rest of the frame")


async def test_receive_waits_for_data_and_returns_what_came(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    os.set_blocking(read_end, False)
    receiver = FdReceiver(read_end, max_bytes=4)
    received: list[bytes] = []
    with trio.fail_after(PATIENCE_S):
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                received.append(await receiver.receive())

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            assert received == []  # nothing to read: it waits, it does not spin
            os.write(write_end, b"hello")
        assert received == [b"hell"]  # at most max_bytes
        assert await receiver.receive() == b"o"
        os.close(write_end)
        assert await receiver.receive() == b""  # end of file


async def test_closing_the_stream_wakes_a_waiting_receive_with_closed_resource_error() -> None:
    """The ``FdStream`` stays the descriptor's owner: closed from another task (the
    connection closing), the receive waiting on it ends as Trio's own would."""
    read_end, write_end = os.pipe()
    stream = trio.lowlevel.FdStream(read_end)
    receiver = FdReceiver(stream.fileno(), max_bytes=1024)
    outcome: list[BaseException] = []
    try:
        with trio.fail_after(PATIENCE_S):
            async with trio.open_nursery() as nursery:

                async def receive() -> None:
                    try:
                        await receiver.receive()
                    except trio.ClosedResourceError as exc:
                        outcome.append(exc)

                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                await stream.aclose()
    finally:
        os.close(write_end)
    assert len(outcome) == 1
