"""The worker's pipes without a scheduler pass per frame, when they are OS pipes.

A tiny request's round trip is made of Trio task steps, not of bytes (what one costs is
measured by ``benchmarks/overhead.py``, figures in docs/bench.md). Going through
``trio.abc`` streams costs steps the protocol does not need: ``FdStream.send_all`` and
``receive_some`` each begin with a checkpoint, and a writer task that owns stdin must be
woken for every frame. When a stream is a ``trio.lowlevel.FdStream`` (what
``trio.Process`` and the in-process fakes give), the connection uses these instead:

- ``write_nowait``: a frame goes out with one non-blocking ``write(2)`` from the
  task that made it, synchronously, so it can neither be torn by a cancellation nor
  wait for a scheduler pass. What does not fit in the pipe is handed to the writer
  task, which then owns stdin until it has caught up (``WorkerConnection._send``).
- ``FdReceiver``: wait until stdout is readable, then read, where ``receive_some``
  would first yield, then read, usually get ``EAGAIN`` and only then wait.

Any other stream (a test's memory stream, a user's custom transport) falls back to the
plain ``trio.abc`` calls. Errors are left as ``OSError`` for ``failures`` (``worker_failure``),
the one place they are translated.
"""

from __future__ import annotations

import errno
import os

import trio


def pipe_fd(stream: trio.abc.SendStream | trio.abc.ReceiveStream) -> int | None:
    """The file descriptor behind ``stream`` if it is an OS pipe Trio manages, else None."""
    if isinstance(stream, trio.lowlevel.FdStream):
        return stream.fileno()
    return None


def write_nowait(fd: int, data: bytes) -> int:
    """Write what fits of ``data`` to the non-blocking ``fd`` now; return how much did.

    Raises ``OSError`` (``BrokenPipeError`` once the reader is gone)."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


class FdReceiver:
    """``receive_some`` for an ``FdStream``'s descriptor: wait for data, then read it.

    The stream object stays the owner of the descriptor: closing it (from any task)
    wakes a waiting ``receive`` with ``trio.ClosedResourceError``, as Trio's own
    ``receive_some`` would be.
    """

    def __init__(self, fd: int, max_bytes: int) -> None:
        self._fd = fd
        self._max_bytes = max_bytes

    async def receive(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self._fd)
            try:
                return os.read(self._fd, self._max_bytes)
            except BlockingIOError:
                continue  # woken without data (another reader, a spurious wake-up)
            except OSError as error:
                if error.errno == errno.EBADF:
                    raise trio.ClosedResourceError("the pipe was closed") from None
                raise
