"""One real ``mcpi-worker`` driven by a blocking client over its pipes: for the benchmarks
that time single requests or a worker's start with no event loop in the way
(hostile_latency.py, thread_handoff.py, hint.py, kernel.py; each imports this file from
beside it).

The frames are the protocol's own (``encode`` and ``FrameDecoder``); only the blocking
reads and writes are here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Final

from mcpi_worker.protocol import WORKER_MESSAGES, FrameDecoder, Hello, Message, NeedData, encode

READ_SIZE: Final = 65536


class BlockingWorker:
    """``argv`` started with its stdin and stdout as pipes, said hello to as ``client``
    with ``versions`` (and the size hint ``expected_points``); its welcome in ``welcome``.
    ``then``: requests written in the same write as the hello, so that a benchmark timing
    a worker from its start does not wait for the welcome first. Its stderr is ``stderr``
    (a ``subprocess`` destination: None leaves it on ours); ``env`` its environment."""

    def __init__(
        self,
        argv: Sequence[str],
        client: str,
        versions: tuple[int, ...],
        stderr: int | None = subprocess.DEVNULL,
        *,
        expected_points: int | None = None,
        then: Sequence[Message] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.process = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin.fileno(), self.process.stdout.fileno()
        self._decoder = FrameDecoder(WORKER_MESSAGES)
        self.send(Hello(versions=versions, client=client, expected_points=expected_points), *then)
        self.welcome = self.receive()

    def send(self, *messages: Message) -> None:
        self.write(b"".join(encode(message) for message in messages))

    def write(self, frames: bytes) -> None:
        """Frames already encoded (a benchmark that times the write leaves the encoding out)."""
        os.write(self.stdin, frames)

    def receive(self) -> Message:
        """The worker's next message, read as it comes. Raises ``SystemExit`` if the
        worker closes its stdout first (a benchmark has nothing left to measure then)."""
        while isinstance(message := self._decoder.next_message(), NeedData):
            data = os.read(self.stdout, READ_SIZE)
            if not data:
                raise SystemExit(f"the worker closed its output (exit status {self.process.wait()})")
            self._decoder.feed(data)
        return message

    def close(self) -> int:
        """Close its stdin (it exits on end of input) and wait for it; its exit status."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait()
