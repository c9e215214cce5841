"""A throwaway client written from protocol.md alone, driving the real worker.

It uses only ``struct`` and ``msgpack`` for the protocol (no ``mcpi_worker`` import
for anything on the wire), to show that the document is enough to write a peer.
The numbers it checks are copied from the document's golden kernel table.
"""

from __future__ import annotations

import os
import select
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from worker_process import TIMEOUT, worker_command


class SpecClient:
    """protocol.md §2: u32 big-endian length, then one msgpack map."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.buffer = b""
        self.next_id = 1

    def send(self, **message: Any) -> None:
        body = msgpack.packb(message)
        assert self.proc.stdin is not None
        self.proc.stdin.write(struct.pack(">I", len(body)) + body)
        self.proc.stdin.flush()

    def request(self, **message: Any) -> int:
        """Send a request with a fresh id (§6: never reused) and return the id."""
        request_id = self.next_id
        self.next_id += 1
        self.send(id=request_id, **message)
        return request_id

    def _read_some(self, deadline: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError("the worker said nothing")
        return os.read(fd, 65536)

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None at end of file between frames (§2)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            if len(self.buffer) >= 4:
                (length,) = struct.unpack(">I", self.buffer[:4])
                assert 0 < length <= 1 << 20
                if len(self.buffer) >= 4 + length:
                    body = self.buffer[4 : 4 + length]
                    self.buffer = self.buffer[4 + length :]
                    message = msgpack.unpackb(body)
                    assert isinstance(message, dict)
                    return message
            data = self._read_some(deadline)
            if not data:
                assert self.buffer == b"", "end of file inside a frame"
                return None
            self.buffer += data

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(TIMEOUT)


@pytest.fixture
def client() -> Iterator[SpecClient]:
    spec_client = SpecClient()
    try:
        yield spec_client
    finally:
        if spec_client.proc.poll() is None:
            spec_client.proc.kill()
            spec_client.proc.wait()


def handshake(client: SpecClient) -> dict[str, Any]:
    client.send(type="hello", versions=[1], client="spec-client")
    welcome = client.receive()
    assert welcome is not None and welcome["type"] == "welcome" and welcome["version"] == 1
    return welcome


def test_conversation_from_the_spec(client: SpecClient) -> None:
    welcome = handshake(client)
    assert "numpy" in welcome["kernels"] and welcome["max_inflight"] >= 2
    assert welcome["pid"] == client.proc.pid

    # §13 golden kernel table rows, pipelined (§6) and matched by id.
    expected = {}
    for kernel, seed, stream, points, inside in [
        ("numpy", 12345, 0, 1_000_000, 785194),
        ("python", 12345, 1, 100_000, 78604),
    ]:
        request_id = client.request(
            type="sample", seed=seed, stream=stream, points=points, kernel=kernel
        )
        expected[request_id] = (points, inside)
    ping_id = client.request(type="ping")
    answers = {}
    for _ in range(3):
        answer = client.receive()
        assert answer is not None
        answers[answer["id"]] = answer
    assert answers[ping_id]["type"] == "pong"
    for request_id, (points, inside) in expected.items():
        assert answers[request_id]["type"] == "result"
        assert (answers[request_id]["points"], answers[request_id]["inside"]) == (points, inside)

    # §7: cancel a long request; exactly one final response, "cancelled".
    long_id = client.request(type="sample", seed=1, stream=0, points=2**40, kernel="numpy")
    client.send(type="cancel", id=long_id)
    client.send(type="cancel", id=long_id)
    answer = client.receive()
    assert answer == {**answer, "type": "error", "id": long_id, "code": "cancelled"}

    # §8: a per-request error, and the worker goes on.
    bad_id = client.request(type="sample", seed=1, stream=0, points=10, kernel="cuda")
    answer = client.receive()
    assert answer is not None and (answer["id"], answer["code"]) == (bad_id, "unknown_kernel")

    # §9: shutdown, then end of file on stdout, exit 0.
    client.send(type="shutdown")
    assert client.receive() is None
    assert client.close() == 0


def test_fatal_error_from_the_spec(client: SpecClient) -> None:
    handshake(client)
    assert client.proc.stdin is not None
    client.proc.stdin.write(b"\x00\x00\x00\x00")  # §2: zero length is malformed_frame
    client.proc.stdin.flush()
    answer = client.receive()
    assert answer is not None and answer["id"] is None and answer["code"] == "malformed_frame"
    assert client.receive() is None  # §8: nothing follows a fatal error
    assert client.proc.wait(TIMEOUT) == 3  # §10.3
