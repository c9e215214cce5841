"""The worker contract, run against every worker we ship, so the fakes cannot drift.

One suite, four peers: the real ``mcpi-worker``, the subprocess fake with no
misbehaviour, the in-process fake, and ``spec_worker.py`` (written from protocol.md alone,
importing nothing from mcpi). Each test speaks raw protocol through
``WorkerClient`` and checks only what protocol.md promises. Counts are checked
against ``mcpi_worker.kernels`` directly, so all three agree with each other too.

Requests that must not finish (cancel, busy, shutdown) are sent in one write
together with what ends them, and ask for 1e9 points: the real worker's kernel sees
the cancel within a block, and a fake processes the whole write before it starts
computing. Either way only the protocol's promise is asserted ("exactly one final
response"), never who won the race.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import msgpack
import pytest
import trio
from running_fake import running_fake
from worker_process import SPEC_WORKER, worker_command

from mcpi_coordinator.launch.transport import WorkerProcess
from mcpi_coordinator.testing.client import StderrTail, WorkerClient, open_worker
from mcpi_coordinator.testing.fake_worker import fake_worker_command
from mcpi_worker import kernels, protocol
from mcpi_worker.protocol import (
    MAX_FRAME,
    MAX_POINTS,
    PROTOCOL_VERSIONS,
    Cancel,
    Error,
    ErrorCode,
    Hello,
    Ping,
    Pong,
    Result,
    Sample,
    Shutdown,
    WorkerMessage,
)

SEED = 1234567
BIG = 10**9  # seconds of work for any worker; only ever sent to be cancelled
MEDIUM = 30_000_000  # a tenth of a second or so
TIMEOUT = 60  # generous: CI is a loaded 2-core box


Peer = tuple[WorkerProcess, WorkerClient, StderrTail]
OpenPeer = Callable[[], AbstractAsyncContextManager[Peer]]


@asynccontextmanager
async def _subprocess_peer(command: list[str]) -> AsyncIterator[Peer]:
    async with open_worker(command) as (process, client, stderr):
        yield process, client, stderr


@pytest.fixture(params=["mcpi-worker", "mcpi-worker-jobs-3", "subprocess-fake", "in-process-fake", "spec-worker"])
def open_peer(request: pytest.FixtureRequest) -> OpenPeer:
    if request.param == "mcpi-worker":
        return lambda: _subprocess_peer(worker_command())
    if request.param == "mcpi-worker-jobs-3":  # several samples at once behind one stdio: the same contract
        return lambda: _subprocess_peer([*worker_command(), "--jobs", "3"])
    if request.param == "spec-worker":
        return lambda: _subprocess_peer([sys.executable, SPEC_WORKER])
    if request.param == "subprocess-fake":
        return lambda: _subprocess_peer(fake_worker_command())
    return running_fake


def sample(id: int, points: int = 50_000, stream: int | None = None, kernel: str = "numpy") -> Sample:
    return Sample(id=id, seed=SEED, stream=id if stream is None else stream, points=points, kernel=kernel)


def raw_frame(body: object) -> bytes:
    payload = msgpack.packb(body)
    return protocol.HEADER.pack(len(payload)) + payload


def is_final(message: WorkerMessage, points: int = BIG) -> bool:
    """A request's one final response after a cancel: ``cancelled``, or its result if
    it won the race."""
    if isinstance(message, Error):
        return message.code == ErrorCode.CANCELLED
    return isinstance(message, Result) and message.points == points


def by_id(messages: list[WorkerMessage]) -> dict[int | None, list[WorkerMessage]]:
    grouped: dict[int | None, list[WorkerMessage]] = {}
    for message in messages:
        grouped.setdefault(getattr(message, "id", None), []).append(message)
    return grouped


async def test_handshake_fields(open_peer: OpenPeer) -> None:
    async with open_peer() as (process, client, _):
        with trio.fail_after(TIMEOUT):
            welcome = await client.handshake()
    assert welcome.version == max(PROTOCOL_VERSIONS)
    assert welcome.pid == process.pid
    assert set(welcome.kernels) >= {"numpy", "python"}
    assert welcome.max_inflight >= 1
    assert welcome.max_frame == MAX_FRAME
    assert welcome.max_points == MAX_POINTS
    assert welcome.worker and welcome.host


@pytest.mark.parametrize(
    ("kernel", "stream", "points"),
    [("numpy", 0, 100_000), ("numpy", 2**64 - 1, 65_537), ("python", 3, 20_000), ("numpy", 5, 0)],
)
async def test_counts_are_the_kernels_counts(open_peer: OpenPeer, kernel: str, stream: int, points: int) -> None:
    expected = kernels.KERNELS[kernel](SEED, stream, points)
    async with open_peer() as (_, client, _):
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            # The same request twice (sequentially, new ids): the count is a pure function.
            for request_id in (1, 2):
                await client.send(sample(request_id, points, stream, kernel))
                result = await client.receive()
                assert isinstance(result, Result)
                assert (result.id, result.inside, result.points) == (request_id, expected, points)


async def test_pipelined_requests_are_answered_by_id(open_peer: OpenPeer) -> None:
    ids = [2**64 - 1, 0, 77, 5]
    async with open_peer() as (_, client, _):
        with trio.fail_after(TIMEOUT):
            welcome = await client.handshake()
            window = ids[: welcome.max_inflight]
            await client.send(*(sample(i, stream=n) for n, i in enumerate(window)), Ping(id=42))
            responses = [await client.receive() for _ in range(len(window) + 1)]
    grouped = by_id(responses)  # type: ignore[arg-type]
    assert sorted(grouped, key=str) == sorted([*window, 42], key=str)
    assert grouped[42] == [Pong(id=42)]
    for n, i in enumerate(window):
        (result,) = grouped[i]
        assert isinstance(result, Result) and result.inside == kernels.count_numpy(SEED, n, 50_000)


async def test_ping_is_answered_before_a_running_sample_finishes(open_peer: OpenPeer) -> None:
    async with open_peer() as (_, client, _):
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            await client.send(sample(1, points=MEDIUM), Ping(id=2))
            first, second = await client.receive(), await client.receive()
    assert first == Pong(id=2)
    assert isinstance(second, Result) and second.id == 1


async def test_cancel_gives_exactly_one_final_response(open_peer: OpenPeer) -> None:
    async with open_peer() as (process, client, _):
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            # 1 runs, 2 is queued; both cancelled (twice), plus ids never sent.
            await client.send(
                sample(1, BIG), sample(2, BIG), Cancel(id=2), Cancel(id=1), Cancel(id=1),
                Cancel(id=999), Ping(id=3),
            )
            responses = [await client.receive() for _ in range(3)]
            # Cancelling finished and unknown ids again changes nothing; the worker serves on.
            await client.send(Cancel(id=1), Cancel(id=2), sample(4, 1000))
            responses.append(await client.receive())
            await client.send(Shutdown())
            responses += await client.receive_until_eof()
            assert await process.wait() == 0
    grouped = by_id(responses)  # type: ignore[arg-type]
    assert Counter({k: len(v) for k, v in grouped.items()}) == Counter({1: 1, 2: 1, 3: 1, 4: 1})
    for request_id in (1, 2):
        (final,) = grouped[request_id]
        assert is_final(final), final
    assert isinstance(grouped[4][0], Result) and grouped[4][0].inside == kernels.count_numpy(SEED, 4, 1000)


async def test_per_request_errors_answer_by_id_and_the_worker_serves_on(open_peer: OpenPeer) -> None:
    async with open_peer() as (process, client, _):
        with trio.fail_after(TIMEOUT):
            await client.send(Ping(id=1))
            refused = await client.receive()
            assert isinstance(refused, Error) and refused.code == ErrorCode.HANDSHAKE_REQUIRED
            welcome = await client.handshake()
            busy_id = 100 + welcome.max_inflight
            await client.send_bytes(
                b"".join(
                    [
                        *(protocol.encode(sample(100 + n, BIG)) for n in range(welcome.max_inflight)),
                        protocol.encode(sample(busy_id, BIG)),  # one too many
                        protocol.encode(sample(100, BIG)),  # id 100 is outstanding
                        protocol.encode(Ping(id=101)),  # so is 101
                        protocol.encode(sample(7, kernel="fortran")),
                        raw_frame({"type": "sample", "id": 8, "seed": -1}),
                        raw_frame({"type": "frobnicate", "id": 9}),
                        raw_frame({"type": "ping", "id": 10, "extra": [1, {"x": None}]}),
                        protocol.encode(Shutdown()),
                    ]
                )
            )
            responses = await client.receive_until_eof()
            assert await process.wait() == 0
    grouped = by_id(responses)  # type: ignore[arg-type]
    codes = {i: [getattr(m, "code", type(m).__name__) for m in grouped[i]] for i in grouped}
    assert codes[busy_id] == [ErrorCode.BUSY]
    assert codes[100][0] == ErrorCode.DUPLICATE_ID  # then the original's final response
    assert codes[101][0] == ErrorCode.DUPLICATE_ID
    assert codes[7] == [ErrorCode.UNKNOWN_KERNEL]
    assert codes[8] == [ErrorCode.INVALID_REQUEST]
    assert codes[9] == [ErrorCode.UNKNOWN_TYPE]
    assert codes[10] == ["Pong"]  # unknown keys are ignored
    for n in range(welcome.max_inflight):  # each accepted sample: exactly one final response
        finals = [m for m in grouped[100 + n] if getattr(m, "code", None) != ErrorCode.DUPLICATE_ID]
        assert len(finals) == 1 and is_final(finals[0]), finals
    assert all(not isinstance(m, Error) or m.id is not None for m in responses)


async def test_requests_before_hello_are_refused(open_peer: OpenPeer) -> None:
    async with open_peer() as (_, client, _):
        with trio.fail_after(TIMEOUT):
            await client.send(Ping(id=1), sample(2))
            responses = [await client.receive(), await client.receive()]
            assert await client.handshake()
    assert [(m.id, m.code) for m in responses] == [  # type: ignore[union-attr]
        (1, ErrorCode.HANDSHAKE_REQUIRED),
        (2, ErrorCode.HANDSHAKE_REQUIRED),
    ]


async def test_stdin_eof_cancels_outstanding_work_and_exits_0(open_peer: OpenPeer) -> None:
    async with open_peer() as (process, client, _):
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            # Not BIG: EOF comes in a second write, and a fake computes a sample that
            # is due without looking at stdin (the real worker stops at the next block).
            await client.send(sample(1, MEDIUM), sample(2, MEDIUM))
            await client.close_stdin()
            responses = await client.receive_until_eof()
            assert await process.wait() == 0
    assert sorted(m.id for m in responses) == [1, 2]  # type: ignore[union-attr]
    assert all(is_final(m, MEDIUM) for m in responses)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"hell", ErrorCode.FRAME_TOO_LARGE),
        (protocol.HEADER.pack(0), ErrorCode.MALFORMED_FRAME),
        (raw_frame([1, 2, 3]), ErrorCode.MALFORMED_FRAME),
        (raw_frame({"type": "ping"}), ErrorCode.INVALID_REQUEST),  # no id to answer: fatal
        (protocol.encode(Hello(versions=(1,), client="again")), ErrorCode.INVALID_REQUEST),
        (protocol.encode(Ping(id=1))[:6], ErrorCode.TRUNCATED_FRAME),
    ],
    ids=["oversize", "empty", "not-a-map", "no-id", "second-hello", "truncated"],
)
async def test_fatal_errors_send_one_nil_id_error_and_exit_3(
    open_peer: OpenPeer, data: bytes, code: ErrorCode
) -> None:
    async with open_peer() as (process, client, stderr):
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            await client.send_bytes(data)
            await client.close_stdin()
            responses = await client.receive_until_eof()
            assert await process.wait() == 3
            await stderr.closed.wait()
    assert len(responses) == 1
    (fatal,) = responses
    assert isinstance(fatal, Error) and fatal.id is None and fatal.code == code and fatal.fatal
    assert code in stderr.text


async def test_unsupported_version_is_fatal(open_peer: OpenPeer) -> None:
    async with open_peer() as (process, client, _):
        with trio.fail_after(TIMEOUT):
            await client.send(Hello(versions=(3, 99), client="future"))
            responses = await client.receive_until_eof()
            assert await process.wait() == 3
    assert [(m.id, m.code) for m in responses] == [(None, ErrorCode.UNSUPPORTED_VERSION)]  # type: ignore[union-attr]
