"""The sans-IO protocol core: encoding, decoding, validation, errors.

Like h11's tests, every decoder case is fed three ways (``decode_three_ways``): the
whole input at once, one byte at a time, and followed by a valid trailing frame;
the three must agree, and the trailing frame must be decoded after a per-request
error but never after a fatal one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpi_worker.protocol import (
    COORDINATOR_MESSAGES,
    HEADER,
    MAX_DEPTH,
    MAX_FRAME,
    MAX_GROUPS,
    MAX_POINTS,
    MAX_TEXT,
    NEED_DATA,
    UINT64_MAX,
    WORKER_MESSAGES,
    Cancel,
    Error,
    ErrorCode,
    FatalProtocolError,
    FrameDecoder,
    Hello,
    LocalProtocolError,
    Message,
    Ping,
    Pong,
    RequestError,
    Result,
    Sample,
    Shutdown,
    Welcome,
    encode,
    negotiate_version,
)
from mcpi_worker.protocol.framing import encode_plain_sample

# ------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class Failure:
    """A decoder error reduced to what the protocol promises about it."""

    fatal: bool
    code: str
    request_id: int | None


Event = Message | Failure


def decode(
    chunks: Iterable[bytes], accept: dict[str, type], eof: bool = False, *, batched: bool = False
) -> list[Event]:
    """Feed ``chunks`` in order and collect every message or error, as a receiver would:
    one frame at a time (``next_message``), or with ``batched`` every whole frame of a
    read at once (``next_messages``)."""
    decoder = FrameDecoder(accept)
    events: list[Event] = []

    def drain() -> bool:
        while True:
            try:
                if batched:
                    messages = decoder.next_messages()
                else:
                    message = decoder.next_message()
                    messages = [] if message is NEED_DATA else [message]
            except RequestError as exc:
                events.append(Failure(False, exc.code, exc.request_id))
                continue
            except FatalProtocolError as exc:
                events.append(Failure(True, exc.code, None))
                return False
            if not messages:
                return True
            events.extend(messages)

    for chunk in chunks:
        decoder.feed(chunk)
        if not drain():
            return events
    if eof:
        try:
            decoder.feed_eof()
        except FatalProtocolError as exc:
            events.append(Failure(True, exc.code, None))
    return events


def decode_batched(chunks: Iterable[bytes], accept: dict[str, type], eof: bool = False) -> list[Event]:
    return decode(chunks, accept, eof, batched=True)


TRAILER = Ping(id=424242)


def decode_three_ways(
    data: bytes, accept: dict[str, type] = COORDINATOR_MESSAGES, eof: bool = False
) -> list[Event]:
    """Decode ``data`` whole, byte by byte and with a trailing frame, one frame at a time
    and every whole frame at once (``next_messages``); check they all agree."""
    whole = decode([data], accept, eof)
    bytewise = decode([data[i : i + 1] for i in range(len(data))], accept, eof)
    assert bytewise == whole, "splitting the input changed the outcome"
    assert decode_batched([data], accept, eof) == whole, "decoding a read's frames at once changed the outcome"
    assert decode_batched([data[i : i + 1] for i in range(len(data))], accept, eof) == whole
    if not eof:
        trailer = encode(TRAILER) if accept is COORDINATOR_MESSAGES else encode(Pong(424242))
        with_trailer = decode([data + trailer], accept)
        broken = any(isinstance(e, Failure) and e.fatal for e in whole)
        if broken:
            assert with_trailer == whole, "nothing may be decoded after a fatal error"
        elif not _ends_at_frame_boundary(data, accept):
            pass  # a partial frame would swallow the trailer's bytes: nothing to compare
        else:
            assert with_trailer[: len(whole)] == whole
            assert with_trailer[len(whole) :] == [decode([trailer], accept)[0]]
        assert decode_batched([data + trailer], accept) == with_trailer
    return whole


def _ends_at_frame_boundary(data: bytes, accept: dict[str, type]) -> bool:
    decoder = FrameDecoder(accept)
    decoder.feed(data)
    while True:  # only called when decoding raised no fatal error
        try:
            if decoder.next_message() is NEED_DATA:
                return decoder.at_frame_boundary
        except RequestError:
            continue


def frame(body: Any, **packb_options: Any) -> bytes:
    """A frame around an arbitrary msgpack value (which may break the protocol)."""
    payload = msgpack.packb(body, **packb_options)
    return HEADER.pack(len(payload)) + payload


def raw_frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def request_failure(code: ErrorCode, request_id: int | None) -> list[Event]:
    return [Failure(False, code, request_id)]


def fatal(code: ErrorCode) -> list[Event]:
    return [Failure(True, code, None)]


SAMPLE = {"type": "sample", "id": 5, "seed": 1, "stream": 2, "points": 3, "kernel": "numpy"}

# ------------------------------------------------------------------ round trips

ALL_MESSAGES: list[Message] = [
    Hello(versions=(1, 2), client="tests/1.0"),
    Sample(id=UINT64_MAX, seed=UINT64_MAX, stream=UINT64_MAX, points=MAX_POINTS, kernel="numpy"),
    Sample(id=0, seed=0, stream=0, points=0, kernel="python"),
    Ping(id=1),
    Cancel(id=2),
    Shutdown(),
    Welcome(1, "mcpi-worker/0", 1, "h", ("numpy", "python"), 4, MAX_FRAME, MAX_POINTS),
    Result(id=3, inside=2, points=3, elapsed_s=0.5),
    Pong(id=4),
    Error(id=5, code="busy", message="try later"),
    Error(id=None, code="malformed_frame", message="bad"),
    Error(id=6, code="a_code_from_the_future", message="unknown codes are accepted"),
]


def accept_for(message: Message) -> dict[str, type]:
    return COORDINATOR_MESSAGES if message.TYPE in COORDINATOR_MESSAGES else WORKER_MESSAGES


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    assert decode_three_ways(encode(message), accept_for(message)) == [message]


@given(
    request_id=st.integers(0, UINT64_MAX),
    seed=st.integers(0, UINT64_MAX),
    stream=st.integers(0, UINT64_MAX),
    points=st.integers(0, MAX_POINTS),
    kernel=st.text(max_size=20) | st.sampled_from(["numpy", "x" * MAX_TEXT]),
)
def test_a_plain_sample_s_frame_without_a_sample_is_encode_s(
    request_id: int, seed: int, stream: int, points: int, kernel: str
) -> None:
    # What a coordinator sends for each plain sample, byte for byte the frame of the
    # Sample it stands for (the golden frames pin encode's own bytes).
    assert encode_plain_sample(request_id, seed, stream, points, kernel) == encode(
        Sample(request_id, seed, stream, points, kernel)
    )


_STREAM_PARTS: list[bytes] = [
    *(encode(m) for m in ALL_MESSAGES if m.TYPE in COORDINATOR_MESSAGES),
    frame({"type": "sample", "id": 7, "seed": 1, "stream": 2, "points": -3, "kernel": "numpy"}),  # a bad field
    frame({"type": "launch", "id": 8}),  # an unknown type, with a usable id
    frame({"type": "ping"}),  # a missing field, no usable id
    frame({**SAMPLE, "extra": [1, {"a": 2}]}),  # valid, not a flat map
    frame([1, 2]),  # fatal: not a map
    raw_frame(b""),  # fatal: zero length
]


@given(parts=st.lists(st.sampled_from(_STREAM_PARTS), max_size=12), cut=st.integers(1, 64))
def test_a_read_s_frames_decoded_at_once_are_what_one_at_a_time_gives(parts: list[bytes], cut: int) -> None:
    # Good frames, per-request errors and fatal ones in any order, read in pieces of
    # any size: next_messages returns the messages before a bad frame, and the bad
    # frame's error next, exactly as next_message one call at a time.
    data = b"".join(parts)
    reads = [data[i : i + cut] for i in range(0, len(data), cut)]
    assert decode_batched(reads, COORDINATOR_MESSAGES) == decode(reads, COORDINATOR_MESSAGES)
    assert decode_batched([data], COORDINATOR_MESSAGES, eof=True) == decode([data], COORDINATOR_MESSAGES, eof=True)


def test_several_frames_in_one_stream() -> None:
    messages = [m for m in ALL_MESSAGES if m.TYPE in COORDINATOR_MESSAGES]
    data = b"".join(encode(m) for m in messages)
    assert decode_three_ways(data) == messages


def test_error_properties() -> None:
    assert Error(None, "busy", "").fatal  # a nil id is always fatal
    assert Error(1, ErrorCode.TRUNCATED_FRAME, "").fatal
    assert not Error(1, ErrorCode.BUSY, "").fatal
    assert Error(1, ErrorCode.BUSY, "").retryable
    assert Error(1, ErrorCode.CANCELLED, "").retryable
    assert not Error(1, ErrorCode.INVALID_REQUEST, "").retryable
    assert not Error(1, "a_code_from_the_future", "").retryable


def test_negotiate_version() -> None:
    assert negotiate_version((1,)) == 1
    assert negotiate_version((1, 7, 9)) == 1
    assert negotiate_version((1, 2)) == 2
    assert negotiate_version((2, 3)) == 2
    assert negotiate_version((3, 4)) is None


def test_fields_version_2_added_are_optional_and_left_out_at_their_default() -> None:
    """A version-1 frame has none of them, and means their defaults; our encoder leaves
    a field out when it holds its default, so version-1 frames keep their bytes."""
    v1 = {"type": "sample", "id": 1, "seed": 2, "stream": 3, "points": 4, "kernel": "numpy"}
    assert decode_three_ways(frame(v1)) == [Sample(1, 2, 3, 4, "numpy", streams=1, group=None)]
    assert encode(Sample(1, 2, 3, 4, "numpy")) == frame(v1)
    ranged = {**v1, "streams": 10, "group": 3}
    assert decode_three_ways(frame(ranged)) == [Sample(1, 2, 3, 4, "numpy", streams=10, group=3)]
    assert encode(Sample(1, 2, 3, 4, "numpy", 10, 3)) == frame(ranged)
    assert Sample(1, 2, 3, 4, "numpy", 10, 3).groups == 4
    result = {"type": "result", "id": 1, "inside": 5, "points": 40, "elapsed_s": 0.5, "insides": [1, 2, 1, 1]}
    assert decode_three_ways(frame(result), WORKER_MESSAGES) == [Result(1, 5, 40, 0.5, (1, 2, 1, 1))]
    for bad in ({**v1, "streams": 0}, {**v1, "group": 0}, {**v1, "streams": True}):
        assert decode_three_ways(frame(bad)) == request_failure(ErrorCode.INVALID_REQUEST, 1)
    too_many = {**result, "insides": [0] * (MAX_GROUPS + 1)}
    assert decode([frame(too_many)], WORKER_MESSAGES) == [Failure(False, ErrorCode.INVALID_REQUEST, None)]


def test_elapsed_accepts_integers_and_float32() -> None:
    body = {"type": "result", "id": 1, "inside": 0, "points": 0, "elapsed_s": 2}
    assert decode_three_ways(frame(body), WORKER_MESSAGES) == [Result(1, 0, 0, 2.0)]
    data = frame({**body, "elapsed_s": 0.5}, use_single_float=True)
    assert decode_three_ways(data, WORKER_MESSAGES) == [Result(1, 0, 0, 0.5)]


def test_encode_refuses_a_frame_over_the_limit() -> None:
    """Only a message built by hand, past the text limits, can get there: our own
    mistake (``LocalProtocolError``), never something a peer can cause."""
    with pytest.raises(LocalProtocolError, match="refusing to send a 1048"):
        encode(Error(1, "internal", "x" * MAX_FRAME))


# ------------------------------------------------------------------ framing errors


@pytest.mark.slow
def test_frame_of_exactly_the_limit_is_accepted() -> None:
    body = {"type": "ping", "id": 1, "padding": ""}
    overhead = len(msgpack.packb(body)) + 4  # str32 header instead of fixstr
    body["padding"] = "p" * (MAX_FRAME - overhead)
    data = frame(body)
    assert len(data) == HEADER.size + MAX_FRAME
    assert decode_three_ways(data) == [Ping(1)]


@pytest.mark.parametrize("length", [MAX_FRAME + 1, 0xFFFFFFFF, int.from_bytes(b"hell", "big")])
def test_oversize_length_is_fatal_before_the_body_arrives(length: int) -> None:
    decoder = FrameDecoder(COORDINATOR_MESSAGES)
    decoder.feed(HEADER.pack(length))  # the header alone is enough to refuse
    with pytest.raises(FatalProtocolError) as caught:
        decoder.next_message()
    assert caught.value.code == ErrorCode.FRAME_TOO_LARGE
    assert decoder.buffered == 0
    assert decode_three_ways(HEADER.pack(length) + b"x" * 100) == fatal(ErrorCode.FRAME_TOO_LARGE)


def test_text_instead_of_frames_is_fatal() -> None:
    assert decode_three_ways(b"hello world\n") == fatal(ErrorCode.FRAME_TOO_LARGE)


def test_zero_length_frame_is_fatal() -> None:
    assert decode_three_ways(HEADER.pack(0)) == fatal(ErrorCode.MALFORMED_FRAME)


@pytest.mark.parametrize("body", [b"\xc1", b"\x81\xa4type\xc1"], ids=["alone", "as_a_value"])
def test_a_byte_that_begins_no_msgpack_object_is_fatal_with_a_reason(body: bytes) -> None:
    # msgpack's FormatError for 0xc1 says nothing: the message ended in ": ".
    decoder = FrameDecoder(COORDINATOR_MESSAGES)
    decoder.feed(HEADER.pack(len(body)) + body)
    with pytest.raises(FatalProtocolError) as caught:
        decoder.next_message()
    assert caught.value.code == ErrorCode.MALFORMED_FRAME
    assert caught.value.message == "frame is not one msgpack object: FormatError"


@pytest.mark.parametrize(
    "body", [[1, 2], 7, "ping", None, b"bytes", 1.5, True], ids=lambda b: type(b).__name__
)
def test_non_map_body_is_fatal(body: Any) -> None:
    assert decode_three_ways(frame(body)) == fatal(ErrorCode.MALFORMED_FRAME)


def test_trailing_bytes_inside_a_frame_are_fatal() -> None:
    payload = msgpack.packb({"type": "ping", "id": 1}) + b"\xc0"
    assert decode_three_ways(raw_frame(payload)) == fatal(ErrorCode.MALFORMED_FRAME)


def test_body_ending_inside_its_object_is_fatal() -> None:
    payload = msgpack.packb({"type": "ping", "id": 1})[:-3]
    assert decode_three_ways(raw_frame(payload)) == fatal(ErrorCode.MALFORMED_FRAME)


@pytest.mark.parametrize("where", ["top", "nested"])
def test_binary_map_keys_are_fatal(where: str) -> None:
    inner = {"type": "ping", "id": 1, b"key": 2}
    body = inner if where == "top" else {"type": "ping", "id": 1, "extra": [inner]}
    payload = msgpack.packb(body, use_bin_type=True)
    assert decode_three_ways(raw_frame(payload)) == fatal(ErrorCode.MALFORMED_FRAME)


def test_invalid_msgpack_is_fatal() -> None:
    assert decode_three_ways(raw_frame(b"\xc1")) == fatal(ErrorCode.MALFORMED_FRAME)


def test_bad_utf8_is_fatal() -> None:
    # fixstr(4) holding bytes that are not UTF-8, as the value of "type".
    payload = b"\x81\xa4type\xa4\xff\xfe\xfd\xfc"
    assert decode_three_ways(raw_frame(payload)) == fatal(ErrorCode.MALFORMED_FRAME)


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_up_to_the_limit_is_accepted() -> None:
    # The top-level map is level 1, so MAX_DEPTH - 1 more levels of arrays fit.
    body = {"type": "ping", "id": 1, "extra": nested(MAX_DEPTH - 1)}
    assert decode_three_ways(frame(body)) == [Ping(1)]


def test_deeper_nesting_is_fatal() -> None:
    body = {"type": "ping", "id": 1, "extra": nested(MAX_DEPTH)}
    assert decode_three_ways(frame(body)) == fatal(ErrorCode.MALFORMED_FRAME)


def test_pathologically_deep_nesting_is_fatal() -> None:
    payload = b"\x81\xa1x" + b"\x91" * 5000 + b"\x00"
    assert decode_three_ways(raw_frame(payload)) == fatal(ErrorCode.MALFORMED_FRAME)


@pytest.mark.parametrize(
    "value", [msgpack.ExtType(5, b"data"), msgpack.Timestamp(1, 0)], ids=["ext", "timestamp"]
)
def test_extension_types_are_fatal(value: Any) -> None:
    body = {"type": "ping", "id": 1, "extra": value}
    assert decode_three_ways(frame(body)) == fatal(ErrorCode.MALFORMED_FRAME)


@pytest.mark.parametrize("key", [b"type", 1], ids=["bin", "int"])
def test_non_string_keys_are_fatal(key: Any) -> None:
    body = {"type": "ping", "id": 1, "nested": {key: 1}}
    assert decode_three_ways(frame(body, use_bin_type=True)) == fatal(ErrorCode.MALFORMED_FRAME)
    top = {key: "ping", "id": 1}
    assert decode_three_ways(frame(top, use_bin_type=True)) == fatal(ErrorCode.MALFORMED_FRAME)


@pytest.mark.parametrize("cut", [1, 3, 4, 10])
def test_eof_inside_a_frame_is_fatal(cut: int) -> None:
    data = encode(Ping(1))[:cut]
    assert decode_three_ways(data, eof=True) == fatal(ErrorCode.TRUNCATED_FRAME)


def test_eof_between_frames_is_orderly() -> None:
    data = encode(Ping(1)) + encode(Ping(2))
    assert decode_three_ways(data, eof=True) == [Ping(1), Ping(2)]
    assert decode([], COORDINATOR_MESSAGES, eof=True) == []


def test_a_broken_decoder_stays_broken() -> None:
    decoder = FrameDecoder(COORDINATOR_MESSAGES)
    decoder.feed(HEADER.pack(0) + encode(Ping(1)))
    for _ in range(2):
        with pytest.raises(FatalProtocolError):
            decoder.next_message()
    with pytest.raises(FatalProtocolError):
        decoder.feed_eof()


def test_feed_after_eof_is_a_programming_error() -> None:
    decoder = FrameDecoder(COORDINATOR_MESSAGES)
    decoder.feed_eof()
    with pytest.raises(RuntimeError):
        decoder.feed(b"x")


# ------------------------------------------------------------------ message errors


def test_unknown_keys_are_ignored() -> None:
    body = {**SAMPLE, "priority": "high", "nested": {"a": [1, 2]}}
    assert decode_three_ways(frame(body)) == [Sample(5, 1, 2, 3, "numpy")]


def test_missing_type_is_a_request_error() -> None:
    body = {k: v for k, v in SAMPLE.items() if k != "type"}
    assert decode_three_ways(frame(body)) == request_failure(ErrorCode.INVALID_REQUEST, 5)
    assert decode_three_ways(frame({**SAMPLE, "type": 3})) == request_failure(
        ErrorCode.INVALID_REQUEST, 5
    )


def test_unknown_type_is_a_request_error() -> None:
    assert decode_three_ways(frame({"type": "launch", "id": 9})) == request_failure(
        ErrorCode.UNKNOWN_TYPE, 9
    )
    # A worker's message sent to a worker is just as unknown.
    assert decode_three_ways(frame({"type": "pong", "id": 9})) == request_failure(
        ErrorCode.UNKNOWN_TYPE, 9
    )


def test_unknown_type_without_an_id_has_no_request_id() -> None:
    assert decode_three_ways(frame({"type": "launch"})) == request_failure(
        ErrorCode.UNKNOWN_TYPE, None
    )


@pytest.mark.parametrize("field", ["seed", "stream", "points", "kernel"])
def test_missing_field_is_a_request_error(field: str) -> None:
    body = {k: v for k, v in SAMPLE.items() if k != field}
    assert decode_three_ways(frame(body)) == request_failure(ErrorCode.INVALID_REQUEST, 5)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", -1),
        ("seed", 1.0),
        ("seed", "1"),
        ("seed", None),
        ("seed", True),  # bool is not an integer on the wire
        ("stream", False),
        ("stream", [0]),
        ("points", MAX_POINTS + 1),
        ("points", -5),
        ("points", True),
        ("kernel", 3),
        ("kernel", b"numpy"),
        ("kernel", "k" * (MAX_TEXT + 1)),
    ],
)
def test_wrong_field_types_are_request_errors(field: str, value: Any) -> None:
    data = frame({**SAMPLE, field: value}, use_bin_type=True)
    assert decode_three_ways(data) == request_failure(ErrorCode.INVALID_REQUEST, 5)


@pytest.mark.parametrize("bad_id", [-1, UINT64_MAX + 1, "5", 5.0, True, None])
def test_unusable_id_leaves_no_request_id(bad_id: Any) -> None:
    if type(bad_id) is int and bad_id > UINT64_MAX:
        # msgpack cannot encode 2**64; the nearest thing is a negative int64.
        bad_id = -(2**63)
    assert decode_three_ways(frame({**SAMPLE, "id": bad_id})) == request_failure(
        ErrorCode.INVALID_REQUEST, None
    )


@pytest.mark.parametrize(
    "versions", [[], [0], [1, -1], "1", [True], list(range(1, 100)), None]
)
def test_bad_hello_versions(versions: Any) -> None:
    data = frame({"type": "hello", "versions": versions, "client": "c"})
    assert decode_three_ways(data) == request_failure(ErrorCode.INVALID_REQUEST, None)


@pytest.mark.parametrize(
    "body",
    [
        {"type": "hello", "id": 5, "versions": "1", "client": "c"},
        {"type": "hello", "id": 5, "versions": [1]},
        {"type": "cancel", "id": "5"},
    ],
)
def test_an_id_on_a_message_never_answered_by_id_is_not_usable(body: dict[str, Any]) -> None:
    """A bad hello carrying an extra ``id`` key used to get a per-request error under
    that id; a hello is never answered by id, so the error is fatal (protocol.md §8)."""
    assert decode_three_ways(frame(body)) == request_failure(ErrorCode.INVALID_REQUEST, None)


def test_the_size_hint_is_optional_left_out_when_absent_and_any_uint64() -> None:
    """protocol.md §5.1: absent means not said (None), and a hello without it keeps its
    bytes; 0 and 2**64-1 are valid."""
    plain = {"type": "hello", "versions": [1, 2], "client": "c"}
    assert decode_three_ways(frame(plain)) == [Hello((1, 2), "c", None)]
    assert encode(Hello((1, 2), "c")) == frame(plain)
    for points in (0, 1, 10**10, UINT64_MAX):
        hinted = {**plain, "expected_points": points}
        assert decode_three_ways(frame(hinted)) == [Hello((1, 2), "c", points)]
        assert encode(Hello((1, 2), "c", points)) == frame(hinted)


@pytest.mark.parametrize("points", ["1e9", -1, 1.5e9, 1e9, True, None, [10], {"points": 1}])
def test_a_hello_with_a_bad_size_hint_is_fatal(points: Any) -> None:
    """Not a uint64: the hello breaks §4, and a hello has no usable id (§5.1, §8)."""
    data = frame({"type": "hello", "versions": [1, 2], "client": "c", "expected_points": points})
    assert decode_three_ways(data) == request_failure(ErrorCode.INVALID_REQUEST, None)


def test_a_valid_hello_with_an_extra_id_is_just_a_hello() -> None:
    data = frame({"type": "hello", "id": 5, "versions": [1], "client": "c"})
    assert decode_three_ways(data) == [Hello((1,), "c")]


def test_a_map_with_a_key_twice_is_malformed() -> None:
    """Two readers of one frame could otherwise see two different messages."""
    payload = b"\x83" + msgpack.packb("type") + msgpack.packb("ping") + msgpack.packb("id") + b"\x01"
    payload += msgpack.packb("id") + b"\x02"
    data = HEADER.pack(len(payload)) + payload
    [failure] = decode_three_ways(data)
    assert failure == Failure(True, ErrorCode.MALFORMED_FRAME, None)


@pytest.mark.parametrize(
    "pairs",
    [
        # A flat map (one fixmap of scalars): decoded without a hook, its keys counted.
        b"\x83\xa4type\xa4ping\xa2id\x01\xa2id\x02",
        b"\x83\xa2id\x01\xa4type\xa4ping\xa2id\x01",
        # A map inside a fixmap: decoded with every check, down to the inner map.
        b"\x83\xa4type\xa4ping\xa2id\x01\xa1x\x82\xa1a\x01\xa1a\x02",
        b"\x83\xa4type\xa4ping\xa2id\x01\xa1x\x91\x82\xa1a\x01\xa1a\x02",
    ],
    ids=["top level", "top level, same value", "inner map", "map in an array"],
)
def test_a_key_twice_is_malformed_at_any_level_of_a_small_map(pairs: bytes) -> None:
    [failure] = decode_three_ways(HEADER.pack(len(pairs)) + pairs)
    assert failure == Failure(True, ErrorCode.MALFORMED_FRAME, None)


def test_text_limits() -> None:
    ok = frame({"type": "hello", "versions": [1], "client": "é" * MAX_TEXT})
    assert decode_three_ways(ok) == [Hello((1,), "é" * MAX_TEXT)]
    too_long = frame({"type": "hello", "versions": [1], "client": "é" * (MAX_TEXT + 1)})
    assert decode_three_ways(too_long) == request_failure(ErrorCode.INVALID_REQUEST, None)


def test_error_id_may_be_nil_but_other_ids_may_not() -> None:
    body = {"type": "error", "id": None, "code": "malformed_frame", "message": "m"}
    assert decode_three_ways(frame(body), WORKER_MESSAGES) == [
        Error(None, "malformed_frame", "m")
    ]
    assert decode_three_ways(frame({"type": "pong", "id": None}), WORKER_MESSAGES) == (
        request_failure(ErrorCode.INVALID_REQUEST, None)
    )


def test_welcome_limits_must_be_positive() -> None:
    welcome = {
        "type": "welcome", "version": 1, "worker": "w", "pid": 1, "host": "h",
        "kernels": ["numpy"], "max_inflight": 0, "max_frame": 1, "max_points": 1,
    }  # fmt: skip
    assert decode_three_ways(frame(welcome), WORKER_MESSAGES) == request_failure(
        ErrorCode.INVALID_REQUEST, None
    )


def test_request_errors_do_not_stop_decoding() -> None:
    data = frame({**SAMPLE, "seed": -1}) + encode(Ping(8)) + frame({"type": "nope", "id": 3})
    assert decode_three_ways(data) == [
        Failure(False, ErrorCode.INVALID_REQUEST, 5),
        Ping(8),
        Failure(False, ErrorCode.UNKNOWN_TYPE, 3),
    ]


# ------------------------------------------------------------------ properties

uint64 = st.integers(0, UINT64_MAX)
text = st.text(max_size=40)
line = st.text(st.characters(blacklist_characters="\r\n"), max_size=40)
"""An error's message: one line (protocol.md §8), which the decoder checks."""
coordinator_messages = st.one_of(
    st.builds(Hello, versions=st.lists(st.integers(1, UINT64_MAX), min_size=1, max_size=8).map(
        tuple), client=text, expected_points=st.none() | uint64),
    st.builds(Sample, id=uint64, seed=uint64, stream=uint64,
              points=st.integers(0, MAX_POINTS), kernel=text, streams=st.integers(1, UINT64_MAX),
              group=st.none() | st.integers(1, UINT64_MAX)),
    st.builds(Ping, id=uint64),
    st.builds(Cancel, id=uint64),
    st.just(Shutdown()),
)  # fmt: skip
worker_messages = st.one_of(
    st.builds(Welcome, version=st.integers(1, 9), worker=text, pid=uint64, host=text,
              kernels=st.lists(text, max_size=5).map(tuple), max_inflight=st.integers(1, 99),
              max_frame=st.integers(1, MAX_FRAME), max_points=st.integers(1, MAX_POINTS),
              jobs=st.integers(1, UINT64_MAX)),
    st.builds(Result, id=uint64, inside=uint64, points=st.integers(0, MAX_POINTS),
              elapsed_s=st.floats(min_value=0, allow_infinity=False),
              insides=st.none() | st.lists(uint64, max_size=50).map(tuple)),
    st.builds(Pong, id=uint64),
    st.builds(Error, id=st.none() | uint64, code=text, message=line),
)  # fmt: skip


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(st.lists(coordinator_messages, max_size=8), st.lists(st.integers(0, 10_000), max_size=20))
def test_coordinator_messages_survive_any_chunking(
    messages: list[Message], cuts: list[int]
) -> None:
    data = b"".join(encode(m) for m in messages)
    assert decode(split(data, cuts), COORDINATOR_MESSAGES, eof=True) == messages


@given(st.lists(worker_messages, max_size=8), st.lists(st.integers(0, 10_000), max_size=20))
def test_worker_messages_survive_any_chunking(messages: list[Message], cuts: list[int]) -> None:
    data = b"".join(encode(m) for m in messages)
    assert decode(split(data, cuts), WORKER_MESSAGES, eof=True) == messages


@given(st.binary(max_size=200), st.lists(st.integers(0, 400), max_size=10))
def test_arbitrary_bytes_only_ever_raise_protocol_errors(data: bytes, cuts: list[int]) -> None:
    # Any exception other than the documented two would escape decode() and fail here.
    events = decode(split(data, cuts), COORDINATOR_MESSAGES, eof=True)
    assert decode([data], COORDINATOR_MESSAGES, eof=True) == events


msgpack_ints = st.integers(-(2**63), UINT64_MAX)


@given(st.dictionaries(st.text(max_size=8), msgpack_ints | st.text(max_size=8), max_size=6))
def test_arbitrary_maps_decode_to_a_message_or_a_request_error(body: dict[str, Any]) -> None:
    events = decode([frame(body)], COORDINATOR_MESSAGES)
    assert len(events) == 1
    assert not (isinstance(events[0], Failure) and events[0].fatal)
