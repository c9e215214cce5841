"""WorkerConnection's write path over real OS pipes, with the test as the worker.

Frames go straight to an idle pipe from the sending task; what does not fit waits in
an outbox for the writer task. Whatever the mix, the worker must read every frame
whole and in the order it was sent.
"""

from __future__ import annotations

import math
import os
import signal

import trio
import trio.testing

from mcpi_coordinator.connection.worker_connection import WorkerConnection
from mcpi_worker import protocol

PIPE_CAPACITY = 64 * 1024  # Linux's default; the test sends well beyond it


class _PipeProcess:
    """A ``WorkerProcess`` whose other pipe ends the test holds as raw descriptors."""

    def __init__(self) -> None:
        stdin_r, stdin_w = os.pipe()
        stdout_r, self.stdout_w = os.pipe()
        stderr_r, self.stderr_w = os.pipe()
        self.stdin_r = stdin_r
        os.set_blocking(stdin_r, False)
        # Typed as WorkerProcess's (a protocol's attributes are invariant).
        self.stdin: trio.abc.SendStream | None = trio.lowlevel.FdStream(stdin_w)
        self.stdout: trio.abc.ReceiveStream | None = trio.lowlevel.FdStream(stdout_r)
        self.stderr: trio.abc.ReceiveStream | None = trio.lowlevel.FdStream(stderr_r)
        self.pid = 4243
        self.returncode: int | None = None

    async def wait_exited(self) -> int:
        await trio.sleep_forever()  # it never exits by itself

    async def wait(self) -> int:
        return 0

    def terminate(self) -> None:
        self.returncode = -signal.SIGTERM

    def kill(self) -> None:
        self.returncode = -signal.SIGKILL

    def close_worker_ends(self) -> None:
        for fd in (self.stdin_r, self.stdout_w, self.stderr_w):
            os.close(fd)

    def read_available(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                data = os.read(self.stdin_r, 1 << 16)
            except BlockingIOError:
                return b"".join(chunks)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def _decode(data: bytes, *, whole: bool = True) -> list[protocol.Message]:
    """The frames in ``data``; with ``whole``, ``data`` must end at a frame boundary."""
    decoder = protocol.FrameDecoder(protocol.COORDINATOR_MESSAGES)
    decoder.feed(data)
    messages: list[protocol.Message] = []
    while not isinstance(message := decoder.next_message(), protocol.NeedData):
        messages.append(message)
    assert decoder.at_frame_boundary or not whole
    return messages


def _samples(data: bytes) -> list[protocol.Sample]:
    """The frames in ``data``, which must all be samples and end at a frame boundary."""
    messages = _decode(data)
    samples = [message for message in messages if isinstance(message, protocol.Sample)]
    assert samples == messages, messages
    return samples


def _connect(process: _PipeProcess) -> WorkerConnection:
    """A connection that has had its worker's welcome (answers are not looked at here)."""
    connection = WorkerConnection(
        process, 0, client="tests", task_budget=lambda _points: 60.0, sink=lambda _c, _e: None
    )
    welcome = protocol.Welcome(1, "test", process.pid, "here", ("numpy",), 64, protocol.MAX_FRAME, 10**6)
    hello = connection.coordinator_end.data_to_send()  # what the handshake would write first
    assert isinstance(_decode(hello)[0], protocol.Hello)
    connection.coordinator_end.receive_data(protocol.encode(welcome), 0.0)
    assert connection.coordinator_end.usable
    return connection


async def test_frames_beyond_the_pipe_s_capacity_arrive_whole_and_in_order() -> None:
    process = _PipeProcess()
    connection = _connect(process)
    frame_size = len(protocol.encode(protocol.Sample(1, 2**63, 1, 1, "numpy")))
    count = 3 * PIPE_CAPACITY // frame_size
    data = bytearray()

    async def read_frames(n: int) -> None:
        """Drain stdin as the worker would, letting the writer task refill it."""
        while len(_decode(bytes(data), whole=False)) < n:
            data.extend(process.read_available())
            await trio.lowlevel.checkpoint()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.run_pipes)
            for stream in range(count):
                connection.send_sample(2**63, stream, 1, "numpy", None)
            # Only what fitted went out directly; the rest waits for the writer task.
            # Make room before the writer task runs: the next frame must still queue
            # behind the others rather than slip into the room.
            data.extend(process.read_available())
            assert 0 < len(data) <= PIPE_CAPACITY + frame_size
            connection.send_sample(2**63, count, 1, "numpy", None)
            await read_frames(count + 1)
            await trio.testing.wait_all_tasks_blocked()
            connection.send_sample(2**63, count + 1, 1, "numpy", None)  # direct again
            await read_frames(count + 2)
            nursery.cancel_scope.cancel()
    samples = _samples(bytes(data))
    assert [m.id for m in samples] == list(range(1, count + 3))
    assert [m.stream for m in samples] == list(range(count + 2))
    process.close_worker_ends()


async def test_frames_sent_while_holding_go_out_together_at_the_end() -> None:
    process = _PipeProcess()
    connection = _connect(process)
    with connection.holding():
        for stream in range(3):
            connection.send_sample(7, stream, 10, "numpy", None)
        assert process.read_available() == b""  # nothing written yet
    assert [m.stream for m in _samples(process.read_available())] == [0, 1, 2]
    process.close_worker_ends()


async def test_requests_sent_while_holding_move_the_stall_clock_once_at_the_end() -> None:
    """Counted, not timed: a read's worth of requests sent in one ``holding`` block
    looks at the stall deadline once, at the block's end, and is charged from the
    block's start (a little early: the clock may ring early, never late)."""
    process = _PipeProcess()
    connection = _connect(process)
    clock = trio.CancelScope()
    connection.track_stalls(clock)
    assert clock.deadline == math.inf  # nothing in flight
    before = trio.current_time()
    with connection.holding():
        for stream in range(3):
            connection.send_sample(7, stream, 10, "numpy", None)
            assert clock.deadline == math.inf  # not moved per request
    after = trio.current_time()
    assert before + 60.0 <= clock.deadline <= after + 60.0  # the budget, from the block's start
    assert [m.stream for m in _samples(process.read_available())] == [0, 1, 2]
    connection.send_sample(7, 3, 10, "numpy", None)  # outside a block: moved at once if sooner
    assert before + 60.0 <= clock.deadline <= after + 60.0
    process.close_worker_ends()
