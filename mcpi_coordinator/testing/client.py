"""A deliberately simple coordinator side, for tests that talk to one worker directly.

``WorkerClient`` writes messages (or raw bytes) to a worker's stdin and reads its
responses one at a time, in arrival order, with no matching, retries or timeouts of its
own: the test decides what to expect. It is a probe, not a coordinator: it uses the
protocol's framing (``FrameDecoder``) but none of ``CoordinatorEnd``'s rules, because a
test of a worker must see what the worker sent, right or wrong, to judge it. It works with a real
``mcpi-worker`` (a ``trio.Process``), a subprocess fake and an in-process fake alike,
which is what the contract tests rely on. ``StderrTail`` drains a worker's stderr so a
chatty worker never blocks on a full pipe; ``open_worker`` starts a command with both.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final, Protocol

import trio

from mcpi_worker import protocol
from mcpi_worker.protocol import NEED_DATA, Hello, Welcome, WorkerMessage

CLIENT_NAME: Final[str] = "mcpi-testing-client"


class Pipes(Protocol):
    """What a ``WorkerClient`` needs of a process: its stdin and stdout."""

    @property
    def stdin(self) -> trio.abc.SendStream | None: ...

    @property
    def stdout(self) -> trio.abc.ReceiveStream | None: ...


class WorkerClient:
    """Send to and receive from one worker. Wrap calls in ``trio.fail_after``.

    ``process`` is anything with a ``stdin`` and a ``stdout`` stream (``Pipes``: a
    ``trio.Process`` or a fake); both must be set (``AssertionError`` otherwise). The
    sending calls raise ``trio.BrokenResourceError`` once the worker has closed its
    stdin, and ``trio.ClosedResourceError`` after ``close_stdin``.
    """

    def __init__(self, process: Pipes) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._decoder = protocol.FrameDecoder(protocol.WORKER_MESSAGES)
        self._eof = False

    async def send(self, *messages: protocol.Message) -> None:
        """Encode ``messages`` and write them in one ``send_all`` (so they travel together)."""
        await self._stdin.send_all(b"".join(protocol.encode(m) for m in messages))

    async def send_bytes(self, data: bytes) -> None:
        """Write ``data`` as it is (a torn frame, garbage: the test's choice)."""
        await self._stdin.send_all(data)

    async def close_stdin(self) -> None:
        """Close the worker's stdin: EOF, which a worker takes as the end."""
        await self._stdin.aclose()

    async def handshake(self, versions: tuple[int, ...] = protocol.PROTOCOL_VERSIONS) -> Welcome:
        """Send a ``hello`` offering ``versions`` and return the worker's ``welcome``.
        Raises ``AssertionError`` if the next message is anything else (or EOF), and
        what ``receive`` raises."""
        await self.send(Hello(versions=versions, client=CLIENT_NAME))
        welcome = await self.receive()
        if not isinstance(welcome, Welcome):
            raise AssertionError(f"expected a welcome, got {welcome!r}")
        return welcome

    async def receive(self) -> WorkerMessage | None:
        """The next message, or None at an orderly EOF. Raises the decoder's errors:
        ``FatalProtocolError`` for bytes that are not a frame (or EOF inside one),
        ``RequestError`` for a frame that is not a valid worker message."""
        while True:
            message = self._decoder.next_message()
            if message is not NEED_DATA:
                return message  # type: ignore[return-value]
            if self._eof:
                return None
            data = await self._stdout.receive_some(1 << 16)
            if data:
                self._decoder.feed(data)
            else:
                self._eof = True
                self._decoder.feed_eof()

    async def receive_until_eof(self) -> list[WorkerMessage]:
        """Every message until the worker closes stdout."""
        messages: list[WorkerMessage] = []
        while (message := await self.receive()) is not None:
            messages.append(message)
        return messages


class StderrTail:
    """Drains a stream, counting bytes and keeping the last ``keep`` of them.

    Start ``drain`` in a nursery; it returns at EOF.
    """

    def __init__(self, keep: int = 64 * 1024) -> None:
        self.keep = keep
        self.total = 0
        self._tail = bytearray()
        self.closed = trio.Event()

    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        try:
            while data := await stream.receive_some(1 << 16):
                self.total += len(data)
                self._tail += data
                del self._tail[: -self.keep]
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            self.closed.set()

    @property
    def text(self) -> str:
        return self._tail.decode(errors="replace")


@asynccontextmanager
async def open_worker(
    command: Sequence[str], *, keep_stderr: int = 64 * 1024
) -> AsyncIterator[tuple[trio.Process, WorkerClient, StderrTail]]:
    """Start ``command`` as a worker process with piped stdio and stderr drained.

    Yields the process, a ``WorkerClient`` on it and its ``StderrTail``. On exit the
    process is killed if it is still running, and always reaped. Raises ``OSError``
    (``FileNotFoundError``, ``PermissionError``) if ``command`` cannot be started.
    """
    process = await trio.lowlevel.open_process(
        list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        async with trio.open_nursery() as nursery:
            stderr = StderrTail(keep_stderr)
            assert process.stderr is not None
            nursery.start_soon(stderr.drain, process.stderr)
            yield process, WorkerClient(process), stderr
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
