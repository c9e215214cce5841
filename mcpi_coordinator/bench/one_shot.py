"""One chunk through a fresh ``mcpi-worker``: the protocol side of a one-shot worker, sans-IO.

The ``asyncio-subprocess`` and ``trio-run-process`` approaches start a worker per chunk
and differ only in their I/O library. Both drive this object, so the exchange
(hello, one sample, shutdown) is written once, with ``mcpi_worker.protocol``:

1. write ``opening`` (hello + sample), keep stdin open;
2. ``receive()`` stdout bytes until it returns the count;
3. write ``closing`` (shutdown) and close stdin; the worker exits 0.

If stdout ends first, the worker's exit status says more than the protocol can: the
callers check it (``exit_failure``) before falling back to ``end_of_stream()``.

Why not all three frames at once (``trio.run_process(stdin=...)``)? Shutdown and stdin
EOF both *cancel* outstanding work (protocol.md, "Shutdown"), so a sample sent with its
shutdown would race it and usually come back ``cancelled``. Waiting for the result
before saying goodbye is what the protocol asks of any client.
"""

from __future__ import annotations

from typing import Final

from mcpi_coordinator.errors import describe_exit
from mcpi_worker import protocol

CLIENT_NAME: Final = "mcpi-bench"
REQUEST_ID: Final = 1


class OneShotError(Exception):
    """The worker did not answer the one sample with a result. The message says why."""


class OneShotExchange:
    """Client side of "hello, one sample, shutdown" for chunk ``stream`` of ``seed``."""

    def __init__(self, seed: int, stream: int, points: int, kernel: str) -> None:
        self.opening: Final[bytes] = protocol.encode(
            protocol.Hello(versions=protocol.PROTOCOL_VERSIONS, client=CLIENT_NAME)
        ) + protocol.encode(
            protocol.Sample(id=REQUEST_ID, seed=seed, stream=stream, points=points, kernel=kernel)
        )
        self.closing: Final[bytes] = protocol.encode(protocol.Shutdown())
        self._points = points
        self._decoder = protocol.FrameDecoder(protocol.WORKER_MESSAGES)
        self._welcomed = False

    def receive(self, data: bytes | bytearray) -> int | None:
        """Feed stdout bytes; the ``inside`` count once the result is in, else None.

        Raises ``OneShotError`` for anything but welcome-then-result: an error reply
        or a stream that breaks the protocol.
        """
        try:
            self._decoder.feed(bytes(data))
            while (message := self._decoder.next_message()) is not protocol.NEED_DATA:
                inside = self._handle(message)  # type: ignore[arg-type]
                if inside is not None:
                    return inside
        except protocol.ProtocolError as exc:
            raise OneShotError(f"worker broke the protocol: {exc.code}: {exc.message}") from None
        return None

    def end_of_stream(self) -> OneShotError:
        """The error for a worker whose stdout ended (exit 0) before the result came."""
        try:
            self._decoder.feed_eof()
        except protocol.FatalProtocolError as exc:
            return OneShotError(f"worker broke the protocol: {exc.code}: {exc.message}")
        return OneShotError("worker closed stdout before answering the sample")

    def _handle(self, message: protocol.Message) -> int | None:
        if isinstance(message, protocol.Error):
            raise OneShotError(f"worker answered error {message.code}: {message.message}")
        if not self._welcomed:
            if not isinstance(message, protocol.Welcome):
                raise OneShotError(f"expected welcome first, got {message.TYPE}")
            self._welcomed = True
            return None
        if not isinstance(message, protocol.Result) or message.id != REQUEST_ID:
            raise OneShotError(f"expected the result of request {REQUEST_ID}, got {message!r}")
        if message.points != self._points:
            raise OneShotError(f"result covers {message.points} points, asked {self._points}")
        return message.inside


def exit_failure(returncode: int, stderr: bytes) -> OneShotError:
    """The error for a worker that exited ``returncode`` != 0, with its last stderr line."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    tail = f"; stderr: {lines[-1]}" if lines else ""
    return OneShotError(f"worker ended before its result ({describe_exit(returncode)}){tail}")
