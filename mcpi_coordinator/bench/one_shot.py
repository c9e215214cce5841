"""One chunk through a fresh ``mcpi-worker``: the client side of a one-shot worker, sans-IO.

The ``asyncio-subprocess`` and ``trio-run-process`` approaches start a worker per chunk
and differ only in their I/O library. Both drive this object, which drives the
protocol's own ``CoordinatorEnd``, so the exchange (hello, one sample, shutdown) follows
the same rules as the pool's, and the checks on the worker's answers are the pool's:

1. write ``data_to_send()`` (the hello);
2. feed stdout bytes to ``receive()``, writing ``data_to_send()`` after each (the sample,
   once the welcome is in; the shutdown, once the result is in), until it returns the
   count; then close stdin: the worker exits 0.

If stdout ends first, the worker's exit status says more than the protocol can: the
callers check it (``exit_failure``) before falling back to ``end_of_stream()``.

Why not all three frames at once (``trio.run_process(stdin=...)``)? Shutdown and stdin
EOF both *cancel* outstanding work (protocol.md §9), so a sample sent with its
shutdown would race it and usually come back ``cancelled``. Waiting for the result
before saying goodbye is what the protocol asks of any client.
"""

from __future__ import annotations

import math
from typing import Final

from mcpi_coordinator.connection.failures import describe_exit
from mcpi_worker.protocol import (
    Answered,
    Broken,
    CoordinatorEnd,
    Error,
    LocalProtocolError,
    Result,
    Welcomed,
)

CLIENT_NAME: Final = "mcpi-bench"

_NOW: Final = 0.0
"""The one-shot client keeps no time limits of its own (the benchmark's caller does)."""


class OneShotError(Exception):
    """The worker did not answer the one sample with a result. The message says why."""


class OneShotExchange:
    """Client side of "hello, one sample, shutdown" for chunk ``stream`` of ``seed``."""

    def __init__(self, seed: int, stream: int, points: int, kernel: str) -> None:
        self._coordinator_end = CoordinatorEnd(client=CLIENT_NAME, task_budget=lambda _points: math.inf)
        self._sample = (seed, stream, points, kernel)
        self._inside: int | None = None

    def data_to_send(self) -> bytes:
        """What to write to the worker's stdin now (may be empty)."""
        return self._coordinator_end.data_to_send()

    def receive(self, data: bytes | bytearray) -> int | None:
        """Feed stdout bytes; the ``inside`` count once the result is in, else None.

        Raises ``OneShotError`` for anything but welcome-then-result: an error reply, a
        worker that does not offer the kernel, or a stream that breaks the protocol.
        """
        events = self._coordinator_end.receive_data(data, _NOW)
        for event in events:
            if isinstance(event, Broken):  # last in the list; what came before is moot
                raise OneShotError(f"worker broke the protocol: {event.reason}")
        for event in events:
            if isinstance(event, Welcomed):
                seed, stream, points, kernel = self._sample
                try:
                    self._coordinator_end.send_sample(seed, stream, points, kernel, now=_NOW)
                except LocalProtocolError as exc:
                    raise OneShotError(f"cannot send the sample: {exc}") from None
            elif isinstance(event, Answered):
                answer = event.answer
                if isinstance(answer, Error):
                    raise OneShotError(f"worker answered error {answer.code}: {answer.message}")
                assert isinstance(answer, Result)  # the end checked it answers the sample
                self._inside = answer.inside
                self._coordinator_end.shutdown()
        return self._inside

    def end_of_stream(self) -> OneShotError:
        """The error for a worker whose stdout ended (exit 0) before the result came."""
        for event in self._coordinator_end.receive_eof(_NOW):
            if isinstance(event, Broken) and "truncated_frame" in event.reason:
                return OneShotError(f"worker broke the protocol: {event.reason}")
        return OneShotError("worker closed stdout before answering the sample")


def exit_failure(returncode: int, stderr: bytes) -> OneShotError:
    """The error for a worker that exited ``returncode`` != 0, with its last stderr line."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    tail = f"; stderr: {lines[-1]}" if lines else ""
    return OneShotError(f"worker ended before its result ({describe_exit(returncode)}){tail}")
