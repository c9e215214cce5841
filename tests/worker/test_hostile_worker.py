"""Hostile input into the worker: the decoder, the worker loop, and the real process.

The generated streams are made of *segments* whose fate protocol.md decides in
advance: a good request (answered once), a well-framed bad request with a usable id
(answered once with a known error code, the worker serves on), a silent
notification, or a fatal segment (one nil-id error frame with a known code, exit 3),
optionally followed by junk the worker must ignore. That oracle is checked three
ways, cheapest first:

1. the sans-IO decoder (many examples, every split of the bytes);
2. the worker loop (``mcpi_worker.server.Worker`` over OS pipes, in threads);
3. the real ``mcpi-worker`` process (few examples), with its RSS watched.

Arbitrary bytes, with no oracle beyond "a documented outcome, in bounded time and
memory", are thrown at each level too.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import msgpack
import psutil
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker_process import worker_command

from mcpi_coordinator.testing.client import open_worker
from mcpi_worker import protocol
from mcpi_worker.protocol import (
    COORDINATOR_MESSAGES,
    HEADER,
    MAX_DEPTH,
    MAX_FRAME,
    MAX_POINTS,
    NEED_DATA,
    UINT64_MAX,
    WORKER_MESSAGES,
    Cancel,
    Error,
    ErrorCode,
    FatalProtocolError,
    FrameDecoder,
    Hello,
    Message,
    Pong,
    RequestError,
    Result,
)
from mcpi_worker.server import Worker

HELLO = protocol.encode(Hello(versions=(1,), client="hostile"))
LOOP_TIMEOUT = 20.0  # seconds; only reached if the worker hangs
RSS_LIMIT = 120 * 2**20
"""An idle worker holds ~45 MiB; one that kept the 100 MiB stream below would hold 145+."""
FRAMES_OF_1MIB = 100


# ------------------------------------------------------------------------ segments


@dataclass(frozen=True)
class Segment:
    """Bytes on the wire and what protocol.md says must come of them."""

    data: bytes
    id: int | None = None
    """The request id a response must carry, if one must come."""
    answers: frozenset[str] = frozenset()
    """Acceptable response kinds: "pong", "result", or an error code."""
    fatal: ErrorCode | None = None
    """The code of the one nil-id error that ends the connection."""
    last: bool = False
    """Must be the last bytes of the stream (a truncated frame)."""
    decoder: str = "error"
    """The sans-IO decoder's own verdict: "message" when it accepts the message and
    the worker judges it (a valid request, an unknown kernel, a second hello);
    "error" when the decoder raises what ``answers``/``fatal`` say. A bad request
    with no usable id is a ``RequestError`` to the decoder, but fatal to the worker:
    "unanswerable"."""


def frame(body: Any) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    return HEADER.pack(len(payload)) + payload


uint64 = st.integers(0, UINT64_MAX)
msgpack_ints = st.integers(-(2**63), UINT64_MAX)
scalars = (
    st.none() | st.booleans() | msgpack_ints | st.floats() | st.text(max_size=12) | st.binary(max_size=12)
)
# Shallow junk for unknown keys: at most a few levels, well inside MAX_DEPTH.
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
extra_keys = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in {"type", "id", "seed", "stream", "points", "kernel"}),
    junk,
    max_size=3,
)
not_uint64 = (
    st.integers(-(2**63), -1) | st.floats() | st.text(max_size=5) | st.none() | st.booleans()
    | st.binary(max_size=4) | st.lists(msgpack_ints, max_size=2)
)


def sample_body(id: int, **overrides: Any) -> dict[str, Any]:
    body = {"type": "sample", "id": id, "seed": 1, "stream": 2, "points": 100, "kernel": "numpy"}
    body.update(overrides)
    return body


@st.composite
def good_request(draw: st.DrawFn, id: int) -> Segment:
    extra = draw(extra_keys)
    if draw(st.booleans()):
        return Segment(frame({"type": "ping", "id": id, **extra}), id, frozenset({"pong"}), decoder="message")
    body = sample_body(
        id,
        seed=draw(uint64),
        stream=draw(uint64),
        # Mostly tiny; sometimes huge, which only EOF or a fatal error will stop.
        points=draw(st.integers(0, 2000) | st.sampled_from([MAX_POINTS, 10**11])),
        kernel=draw(st.sampled_from(["numpy", "python"])),
    )
    # Outstanding samples are bounded by max_inflight ("busy"), and EOF cancels the rest.
    return Segment(
        frame({**body, **extra}), id, frozenset({"result", "busy", "cancelled"}), decoder="message"
    )


@st.composite
def bad_request(draw: st.DrawFn, id: int) -> Segment:
    """Well framed, usable id, invalid otherwise: one per-request error, then serve on."""
    kind = draw(st.sampled_from(["field", "missing", "points", "kernel", "type", "type-kind"]))
    if kind == "field":
        name = draw(st.sampled_from(["seed", "stream", "points", "kernel"]))
        value = draw(not_uint64 if name != "kernel" else msgpack_ints | st.none() | st.binary())
        return Segment(frame(sample_body(id, **{name: value})), id, frozenset({ErrorCode.INVALID_REQUEST}))
    if kind == "missing":
        body = sample_body(id)
        del body[draw(st.sampled_from(["seed", "stream", "points", "kernel"]))]
        return Segment(frame(body), id, frozenset({ErrorCode.INVALID_REQUEST}))
    if kind == "points":
        points = draw(st.integers(MAX_POINTS + 1, UINT64_MAX))
        return Segment(frame(sample_body(id, points=points)), id, frozenset({ErrorCode.INVALID_REQUEST}))
    if kind == "kernel":
        kernel = draw(st.text(max_size=20).filter(lambda k: k not in {"numpy", "python"}))
        return Segment(
            frame(sample_body(id, kernel=kernel)), id, frozenset({ErrorCode.UNKNOWN_KERNEL}), decoder="message"
        )
    if kind == "type":
        op = draw(st.text(max_size=20).filter(lambda t: t not in COORDINATOR_MESSAGES))
        return Segment(frame({"type": op, "id": id}), id, frozenset({ErrorCode.UNKNOWN_TYPE}))
    # "type" present but not a string
    value = draw(msgpack_ints | st.none() | st.binary(max_size=3) | st.lists(msgpack_ints, max_size=2))
    return Segment(frame({"type": value, "id": id}), id, frozenset({ErrorCode.INVALID_REQUEST}))


@st.composite
def fatal_segment(draw: st.DrawFn) -> Segment:
    kind = draw(
        st.sampled_from(
            ["zero", "oversize", "text", "not-map", "bad-msgpack", "trailing", "ext", "deep",
             "bad-utf8", "int-key", "bin-key", "no-id", "bad-id", "hello", "truncated"]
        )
    )
    malformed = ErrorCode.MALFORMED_FRAME
    if kind == "zero":
        return Segment(HEADER.pack(0), fatal=malformed)
    if kind == "oversize":
        length = draw(st.integers(MAX_FRAME + 1, 2**32 - 1))
        return Segment(HEADER.pack(length) + draw(st.binary(max_size=64)), fatal=ErrorCode.FRAME_TOO_LARGE)
    if kind == "text":  # a stray print: "Trac" read as a length is 1.4 GB
        return Segment(b"Traceback (most recent call last):\n", fatal=ErrorCode.FRAME_TOO_LARGE)
    if kind == "not-map":
        body = draw(scalars | st.lists(scalars, max_size=3))
        return Segment(frame(body), fatal=malformed)
    if kind == "bad-msgpack":
        return Segment(HEADER.pack(1) + b"\xc1", fatal=malformed)  # 0xc1 is never used
    if kind == "trailing":
        payload = msgpack.packb({"type": "ping", "id": 1}) + draw(st.binary(min_size=1, max_size=8))
        return Segment(HEADER.pack(len(payload)) + payload, fatal=malformed)
    if kind == "ext":
        ext = msgpack.ExtType(draw(st.integers(0, 127)), draw(st.binary(max_size=8)))
        return Segment(frame({"type": "ping", "id": 1, "x": ext}), fatal=malformed)
    if kind == "deep":
        depth = draw(st.integers(MAX_DEPTH + 1, 5000))
        payload = b"\x81\xa1x" * depth + b"\xc0"  # maps nested in maps, beyond the limit
        return Segment(HEADER.pack(len(payload)) + payload, fatal=malformed)
    if kind == "bad-utf8":
        payload = b"\x81\xa4type\xa2\xff\xfe"
        return Segment(HEADER.pack(len(payload)) + payload, fatal=malformed)
    if kind == "int-key":
        return Segment(frame({1: "ping"}), fatal=malformed)
    if kind == "bin-key":
        return Segment(frame({b"type": "ping"}), fatal=malformed)
    if kind == "no-id":  # a bad request nobody can be told about is fatal
        op = draw(st.sampled_from(["ping", "sample", "frobnicate"]))
        code = ErrorCode.UNKNOWN_TYPE if op == "frobnicate" else ErrorCode.INVALID_REQUEST
        return Segment(frame({"type": op}), fatal=code, decoder="unanswerable")
    if kind == "bad-id":
        bad_id = draw(not_uint64)
        return Segment(
            frame({"type": "ping", "id": bad_id}), fatal=ErrorCode.INVALID_REQUEST, decoder="unanswerable"
        )
    if kind == "hello":
        return Segment(HELLO, fatal=ErrorCode.INVALID_REQUEST, decoder="message")
    whole = protocol.encode(protocol.Ping(id=1))
    cut = draw(st.integers(1, len(whole) - 1))
    return Segment(whole[:cut], fatal=ErrorCode.TRUNCATED_FRAME, last=True)


@dataclass(frozen=True)
class Scenario:
    segments: tuple[Segment, ...]
    trailer: bytes
    """Junk after a fatal segment; never read, never answered."""

    @property
    def data(self) -> bytes:
        return b"".join(s.data for s in self.segments) + self.trailer

    @property
    def fatal(self) -> Segment | None:
        return next((s for s in self.segments if s.fatal is not None), None)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    segments: list[Segment] = []
    for n in range(draw(st.integers(0, 8))):
        # Ids are unique per connection and never reused, as the protocol requires.
        id = draw(st.sampled_from([n, UINT64_MAX - n, 2**32 + n]))
        kind = draw(st.sampled_from(["good", "bad", "cancel"]))
        if kind == "good":
            segments.append(draw(good_request(id)))
        elif kind == "bad":
            segments.append(draw(bad_request(id)))
        else:  # cancelling an id never sent: ignored, no answer
            segments.append(Segment(frame({"type": "cancel", "id": id}), decoder="message"))
    trailer = b""
    if draw(st.booleans()):
        fatal = draw(fatal_segment())
        segments.append(fatal)
        if not fatal.last:
            trailer = draw(st.binary(max_size=64) | st.just(protocol.encode(protocol.Ping(id=10**6))))
    return Scenario(tuple(segments), trailer)


def kind_of(message: Message) -> str:
    if isinstance(message, Pong):
        return "pong"
    if isinstance(message, Result):
        return "result"
    assert isinstance(message, Error), message
    return str(message.code)


def check_outcome(scenario: Scenario, exit_code: int, responses: list[Message]) -> None:
    """What protocol.md promises for this scenario, given how the worker ended."""
    fatal = scenario.fatal
    answered: dict[int, list[str]] = {}
    for message in responses:
        assert not isinstance(message, protocol.Welcome)
        if isinstance(message, Error) and message.id is None:
            assert message is responses[-1], "nothing may follow a fatal error"
            continue
        answered.setdefault(message.id, []).append(kind_of(message))  # type: ignore[union-attr]
    expected = {s.id: s for s in scenario.segments if s.id is not None}
    assert set(answered) <= set(expected), f"answers for ids never sent: {set(answered) - set(expected)}"
    for id, kinds in answered.items():
        assert len(kinds) == 1, f"id {id} answered {kinds}"
        assert kinds[0] in expected[id].answers, f"id {id}: {kinds[0]} not in {set(expected[id].answers)}"
    if fatal is None:
        assert exit_code == 0
        assert set(answered) == set(expected), "every request gets exactly one final response"
        assert not any(isinstance(m, Error) and m.id is None for m in responses)
    else:
        assert exit_code == 3
        last = responses[-1]
        assert isinstance(last, Error) and last.id is None and last.code == fatal.fatal
        # Everything the reader answers itself came before the fatal frame; only
        # samples may go unanswered (queued work is dropped on a fatal error).
        for id, segment in expected.items():
            if "result" not in segment.answers:
                assert id in answered, f"id {id} ({set(segment.answers)}) was not answered"


def decode_all(data: bytes, accept: dict[str, type] = WORKER_MESSAGES) -> list[Message]:
    decoder = FrameDecoder(accept)
    decoder.feed(data)
    decoder.feed_eof()  # a worker's output must end between frames
    messages = []
    while (message := decoder.next_message()) is not NEED_DATA:
        messages.append(message)
    return messages  # type: ignore[return-value]


# --------------------------------------------------------------- 1. the decoder


Outcome = tuple[str, Any]


def decode_outcomes(chunks: list[bytes], accept: dict[str, type]) -> list[Outcome]:
    """Feed chunks as a reader would, draining after each; record every outcome."""
    decoder = FrameDecoder(accept)
    outcomes: list[Outcome] = []

    def drain() -> bool:
        while True:
            try:
                message = decoder.next_message()
            except RequestError as exc:
                outcomes.append(("request_error", (exc.code, exc.request_id)))
                continue
            except FatalProtocolError as exc:
                outcomes.append(("fatal", exc.code))
                return False
            if message is NEED_DATA:
                # Only an incomplete frame may be left: never more than one frame's worth.
                assert decoder.buffered < HEADER.size + MAX_FRAME
                return True
            outcomes.append(("message", message))

    for chunk in chunks:
        decoder.feed(chunk)
        if not drain():
            return outcomes
    try:
        decoder.feed_eof()
    except FatalProtocolError as exc:
        outcomes.append(("fatal", exc.code))
    return outcomes


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@pytest.mark.slow
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.lists(st.integers(0, 400), max_size=12))
def test_decoder_outcomes_follow_the_oracle_for_any_split(scenario: Scenario, cuts: list[int]) -> None:
    data = scenario.data
    whole = decode_outcomes([data], COORDINATOR_MESSAGES)
    assert decode_outcomes(split(data, cuts), COORDINATOR_MESSAGES) == whole
    if len(data) < 2000:
        assert decode_outcomes([bytes([b]) for b in data], COORDINATOR_MESSAGES) == whole
    # Segment by segment, the decoder reaches the verdict the oracle expects, up to
    # the first fatal one (after a fatal verdict of the worker's, it decodes on).
    expected: list[tuple[str, Any]] = []
    for segment in scenario.segments:
        if segment.decoder == "message":
            expected.append(("message", segment.id))
        elif segment.decoder == "unanswerable":
            expected.append(("request_error", (segment.fatal, None)))
        elif segment.fatal is not None:
            expected.append(("fatal", segment.fatal))
        else:
            (code,) = segment.answers
            expected.append(("request_error", (code, segment.id)))
        if segment.fatal is not None:
            break
    got = [
        # A cancel's id is not a request to answer: segments record it as None.
        (kind, None if isinstance(value, Cancel) else getattr(value, "id", None))
        if kind == "message"
        else (kind, value)
        for kind, value in whole
    ]
    if scenario.fatal is None or scenario.fatal.decoder == "error":
        assert got == expected
    else:
        assert got[: len(expected)] == expected


hostile_bodies = st.dictionaries(
    st.text(max_size=10) | st.sampled_from(["type", "id", "points", "inside", "versions", "code"]),
    junk | st.sampled_from(sorted({*COORDINATOR_MESSAGES, *WORKER_MESSAGES})),
    max_size=10,
)


@pytest.mark.slow
@settings(max_examples=150)
@given(hostile_bodies, st.sampled_from([COORDINATOR_MESSAGES, WORKER_MESSAGES]))
def test_any_map_is_a_valid_message_or_a_documented_error(body: dict[str, Any], accept: dict[str, type]) -> None:
    try:
        message = protocol.parse_message(body, accept)
    except RequestError as exc:
        assert exc.code in {ErrorCode.INVALID_REQUEST, ErrorCode.UNKNOWN_TYPE}
        assert exc.request_id is None or 0 <= exc.request_id <= UINT64_MAX
        return
    # Whatever is accepted is well typed: it survives its own encoding unchanged.
    (again,) = decode_all(protocol.encode(message), accept)
    assert again == message


@pytest.mark.slow
@settings(max_examples=300)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=10),
       st.sampled_from([COORDINATOR_MESSAGES, WORKER_MESSAGES]))
def test_arbitrary_bytes_end_in_documented_outcomes_only(
    data: bytes, cuts: list[int], accept: dict[str, type]
) -> None:
    # Any other exception escapes decode_outcomes and fails the test.
    outcomes = decode_outcomes(split(data, cuts), accept)
    assert outcomes == decode_outcomes([data], accept)


# ------------------------------------------------------------ 2. the worker loop


def run_worker_loop(data: bytes, chunks: list[bytes] | None = None) -> tuple[int, bytes]:
    """Serve ``hello + data`` then EOF with a real ``Worker`` over OS pipes; return
    its exit code and everything it wrote after the welcome."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    worker = Worker(in_r, out_w, max_inflight=4)
    outcome: list[Any] = []
    output = bytearray()

    def write() -> None:
        try:
            for chunk in [HELLO, *(chunks if chunks is not None else [data])]:
                _write_all(in_w, chunk)
        except BrokenPipeError:
            pass  # the worker stopped reading after a fatal error: fine
        finally:
            os.close(in_w)

    def read() -> None:
        while piece := os.read(out_r, 65536):
            output.extend(piece)

    threads = [
        threading.Thread(target=lambda: outcome.append(worker.serve()), daemon=True),
        threading.Thread(target=write, daemon=True),
        threading.Thread(target=read, daemon=True),
    ]
    for thread in threads:
        thread.start()
    threads[0].join(LOOP_TIMEOUT)
    assert not threads[0].is_alive(), "the worker loop hung"
    os.close(in_r)  # unblocks a writer the worker no longer reads from
    os.close(out_w)
    threads[2].join(LOOP_TIMEOUT)
    threads[1].join(LOOP_TIMEOUT)
    os.close(out_r)
    welcome, rest = _split_welcome(bytes(output))
    assert isinstance(welcome, protocol.Welcome)
    return int(outcome[0].exit_code), rest


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _split_welcome(output: bytes) -> tuple[Message, bytes]:
    (length,) = HEADER.unpack_from(output)
    (welcome,) = decode_all(output[: HEADER.size + length])
    return welcome, output[HEADER.size + length :]


@pytest.mark.slow
@pytest.mark.usefixtures("quiet_structlog")  # the worker loop logs through structlog
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.lists(st.integers(0, 400), max_size=6))
def test_worker_loop_keeps_the_protocols_promises(scenario: Scenario, cuts: list[int]) -> None:
    exit_code, output = run_worker_loop(scenario.data, split(scenario.data, cuts))
    check_outcome(scenario, exit_code, decode_all(output))


@pytest.mark.usefixtures("quiet_structlog")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_worker_loop_survives_arbitrary_bytes(data: bytes) -> None:
    exit_code, output = run_worker_loop(data)
    responses = decode_all(output)  # whatever it wrote is a clean frame stream
    assert exit_code in (0, 3)
    fatal = [m for m in responses if isinstance(m, Error) and m.id is None]
    assert (exit_code == 3) == bool(fatal)
    if fatal:
        assert fatal == [responses[-1]]


# ---------------------------------------------------------- 3. the real process


async def run_real_worker(data: bytes) -> tuple[int, list[Message], int]:
    """Feed ``data`` after the handshake, then EOF; return exit code, responses, peak RSS."""
    peak_rss = 0
    async with open_worker(worker_command()) as (process, client, _stderr):
        with trio.fail_after(60):
            await client.handshake()
            responses: list[Message] = []
            watched = psutil.Process(process.pid)

            async def feed() -> None:
                try:
                    await client.send_bytes(data)
                    await client.close_stdin()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # it stopped reading after a fatal error

            async def watch_rss() -> None:
                nonlocal peak_rss
                while True:
                    try:
                        peak_rss = max(peak_rss, watched.memory_info().rss)
                    except psutil.NoSuchProcess:
                        return
                    await trio.sleep(0.02)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed)
                nursery.start_soon(watch_rss)
                responses = await client.receive_until_eof()
                exit_code = await process.wait()
                nursery.cancel_scope.cancel()
    return exit_code, responses, peak_rss


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
async def test_real_worker_keeps_the_protocols_promises(scenario: Scenario) -> None:
    exit_code, responses, peak_rss = await run_real_worker(scenario.data)
    check_outcome(scenario, exit_code, responses)
    assert peak_rss < RSS_LIMIT


@pytest.mark.slow
@pytest.mark.parametrize(
    ("data", "exit_code"),
    [
        pytest.param(HEADER.pack(2**32 - 1) + b"\0" * 200_000, 3, id="4GiB-announced"),
        pytest.param(HEADER.pack(MAX_FRAME) + b"\x80" * (MAX_FRAME - 1), 3, id="1MiB-truncated"),
        pytest.param(
            b"".join(
                frame({"type": "ping", "id": n, "pad": b"x" * (MAX_FRAME - 100)})
                for n in range(FRAMES_OF_1MIB)
            ),
            0,
            id="100MiB-of-valid-1MiB-frames",
        ),
        pytest.param(b"\0\0\0\x10" + os.urandom(256 * 1024), 3, id="random-256KiB"),
    ],
)
async def test_real_worker_memory_stays_bounded(data: bytes, exit_code: int) -> None:
    code, responses, peak_rss = await run_real_worker(data)
    assert code == exit_code
    assert peak_rss < RSS_LIMIT, f"peak RSS {peak_rss / 2**20:.0f} MiB for {len(data) / 2**20:.1f} MiB of input"
    if exit_code == 0:
        assert responses == [Pong(id=n) for n in range(FRAMES_OF_1MIB)]
    else:
        assert isinstance(responses[-1], Error) and responses[-1].id is None
