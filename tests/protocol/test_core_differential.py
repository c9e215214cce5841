"""Differential fuzzing of the sans-IO protocol core: the live core (``mcpi_worker.protocol``)
against a frozen copy of it as it was at 8f387ac (``tests/core_8f387ac``), before this
session's speed-ups (one-pass decoding of a read's frames, parsers and encoders
generated from the field table, the typed ``send_checked``).

Peers written from protocol.md alone, hostile workers and fuzzers judge mcpi by what it
does with hostile bytes: the refusal protocol.md prescribes (its error code, fatal or
per request), the state the connection is left in, the bytes it writes. A speed-up may
change how a rule is checked, never what it decides, so the same byte streams go to
both cores, at both ends, and everything observable is held equal after every call:

- a ``FrameDecoder`` of each side, drained one frame at a time (the old
  ``next_message``) and a read at a time (the live ``next_messages``): each message or
  error in order, whether the error is fatal, and what is left buffered;
- a ``WorkerEnd`` receiving a coordinator's frames in every state (before ``hello``,
  serving with samples running and queued, after ``shutdown``), its driver finishing
  and failing samples between reads: events, errors, state, bytes written, messages
  recorded;
- a ``CoordinatorEnd`` receiving a worker's frames before and after its ``welcome``,
  with samples (plain, ranges, checked chunks), pings, cancels and a ``shutdown``
  outstanding: events (what is answered, why a connection broke, which requests are
  handed back), errors, state, deadlines, bytes written;
- ``encode`` (and ``encode_plain_sample``) of any message: byte for byte.

Why a frozen copy, not the fast paths against the slow ones still in the live code
(``_parse_fields``, ``next_message``): the speed-ups also changed the ends' loops (a
read's frames decoded before the first is handled) and the encoder's loop is gone, so
only the old core as a whole is a reference for all of it; and a later change to a
slow path is caught too.

The byte streams reach the edges of msgpack and of the frame: every msgpack type in
every field (bool for an int, floats, nil, bin, str, extension types with the timestamp
among them, nested arrays and maps up to and past ``MAX_DEPTH``, huge and negative
integers, 2**64), every encoding of a number, string, array and map (a small map as
map16 or map32, an int as uint64), unknown, missing and duplicate keys, bin keys,
non-UTF-8 strings, lying length prefixes (zero, past the limit, short of the body),
several frames in one read with a bad one among them, and cuts of the stream into reads
anywhere (down to a byte a read). Where sampling is not enough, a plain loop is
exhaustive: every field of every message is given each of ``TYPE_EDGES`` in turn.

Not compared: ``CoordinatorEnd.restart_clocks``, whose rule changed on purpose after
8f387ac (34804e4: a request's clock restarts once), and the pool above the core (its
dispatcher's own speed-ups are held by tests/pool's hostile tests, not here).

``MCPI_FUZZ_EXAMPLES`` sets the examples of each test (CI's default keeps the file to
seconds); ``pytest --hypothesis-seed=N`` varies the run.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import itertools
import math
import os
import struct
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import core_8f387ac
import core_8f387ac.coordinator_end as old_coordinator
import core_8f387ac.framing as old_framing
import core_8f387ac.messages as old_messages
import core_8f387ac.worker_end as old_worker
import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import mcpi_worker.protocol.coordinator_end as new_coordinator
import mcpi_worker.protocol.framing as new_framing
import mcpi_worker.protocol.messages as new_messages
import mcpi_worker.protocol.worker_end as new_worker
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_worker.constants import MAX_POINTS

EXAMPLES = int(os.environ.get("MCPI_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UINT64_MAX = new_messages.UINT64_MAX

# --------------------------------------------------------------------------- comparing


def plain(value: Any) -> Any:
    """``value`` (a message, an event, an error of either core) as plain data that the
    two cores' values compare equal in: each class by its name, enums by theirs."""
    if isinstance(value, enum.Enum):
        return (type(value).__name__, value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, *(plain(getattr(value, f.name)) for f in dataclasses.fields(value)))
    if isinstance(value, BaseException):
        return (
            type(value).__name__,
            plain(getattr(value, "code", None)),
            plain(getattr(value, "request_id", None)),
            str(value),
        )
    if isinstance(value, (list, tuple)):
        return tuple(plain(item) for item in value)
    if type(value) is float and math.isnan(value):
        return "nan"
    return value


PROTOCOL_ERRORS = (
    new_messages.ProtocolError,
    old_messages.ProtocolError,
    new_messages.LocalProtocolError,
    old_messages.LocalProtocolError,
)


def outcome(call: Callable[[], Any]) -> Any:
    """What ``call`` returned, or the protocol error it raised (anything else escapes:
    a core that raises anything else has a bug of its own)."""
    try:
        return ("returned", plain(call()))
    except PROTOCOL_ERRORS as error:
        return ("raised", plain(error))


# --------------------------------------------------------------------------- raw msgpack

Draw = Callable[[st.SearchStrategy[Any]], Any]
"""``draw`` of a composite strategy, or ``data.draw``: for the helpers that take either."""


def _fits(value: int, low: int, high: int) -> bool:
    return low <= value <= high


_INT_FORMS: list[tuple[int, str, int, int]] = [
    (0xCC, ">B", 0, 0xFF),
    (0xCD, ">H", 0, 0xFFFF),
    (0xCE, ">I", 0, 0xFFFFFFFF),
    (0xCF, ">Q", 0, UINT64_MAX),
    (0xD0, ">b", -(2**7), 2**7 - 1),
    (0xD1, ">h", -(2**15), 2**15 - 1),
    (0xD2, ">i", -(2**31), 2**31 - 1),
    (0xD3, ">q", -(2**63), 2**63 - 1),
]


def raw_header(count: int, fix: int | None, fix_max: int, heads: tuple[int | None, int, int], form: int) -> bytes:
    """The header of a str/bin/array/map of ``count`` bytes or items: form 0 the smallest
    msgpack allows, else form 1..3 the 8-, 16- or 32-bit one (when it fits)."""
    options: list[bytes] = []
    if fix is not None and count <= fix_max:
        options.append(bytes([fix | count]))
    for head, fmt, high in zip(heads, (">B", ">H", ">I"), (0xFF, 0xFFFF, 0xFFFFFFFF), strict=True):
        if head is not None and count <= high:
            options.append(bytes([head]) + struct.pack(fmt, count))
    return options[min(form, len(options) - 1)] if form else options[0]


def rarely(draw: Draw, one_in: int) -> bool:
    """True about once in ``one_in`` draws (Hypothesis draws small integers, 0 above all,
    more often than the rest: the common case is False)."""
    return bool(draw(st.sampled_from([False] * (one_in - 1) + [True])))


@st.composite
def raw(draw: st.DrawFn, value: Any, depth: int = 0) -> bytes:
    """``value`` (plain Python data) as msgpack bytes, each int, string, array and map in
    an encoding drawn among those msgpack allows (the smallest first, which shrinking
    prefers). ``bytes`` go as bin; ``RawStr`` as a str of any bytes; ``Raw`` as is."""
    if isinstance(value, Raw):
        return value.data
    if value is None or type(value) is bool:
        return {None: b"\xc0", False: b"\xc2", True: b"\xc3"}[value]
    if type(value) is int:
        forms = [b for b, fmt, low, high in _INT_FORMS if _fits(value, low, high)]
        smallest: bytes = msgpack.packb(value)
        choice = draw(st.integers(0, len(forms)))
        if choice == 0:
            return smallest
        head, fmt, *_ = next(f for f in _INT_FORMS if f[0] == forms[choice - 1])
        return bytes([head]) + struct.pack(fmt, value)
    if type(value) is float:
        single = struct.pack(">f", value) if abs(value) <= 3.4e38 or not math.isfinite(value) else b""
        if single and draw(st.booleans()):
            return b"\xca" + single  # float32: the value rounded, perhaps
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, (str, RawStr)):
        data = value.encode() if isinstance(value, str) else value.data
        return raw_header(len(data), 0xA0, 31, (0xD9, 0xDA, 0xDB), draw(st.integers(0, 3))) + data
    if isinstance(value, bytes):
        return raw_header(len(value), None, 0, (0xC4, 0xC5, 0xC6), draw(st.integers(0, 3))) + value
    if isinstance(value, (list, tuple)):
        header = raw_header(len(value), 0x90, 15, (None, 0xDC, 0xDD), draw(st.integers(0, 2)))
        return header + b"".join(draw(raw(item, depth + 1)) for item in value)
    if isinstance(value, dict):
        return raw_map(draw, list(value.items()), draw(st.integers(0, 2)), depth)
    raise TypeError(f"no msgpack for {value!r}")


def raw_map(draw: Draw, pairs: list[tuple[Any, Any]], form: int, depth: int = 0) -> bytes:
    """A map of ``pairs`` in that order (a key twice if it is there twice): fixmap when
    form is 0 and it fits, else map16 (1) or map32 (2)."""
    head = raw_header(len(pairs), 0x80, 15, (None, 0xDE, 0xDF), form)
    return head + b"".join(draw(raw(key, depth + 1)) + draw(raw(value, depth + 1)) for key, value in pairs)


@dataclasses.dataclass(frozen=True)
class Raw:
    """Bytes that go into a frame as they are: an object msgpack may not even decode."""

    data: bytes


@dataclasses.dataclass(frozen=True)
class RawStr:
    """A msgpack str of any bytes (not UTF-8, perhaps)."""

    data: bytes


def ext(code: int, data: bytes) -> Raw:
    """An extension object: fixext when its size has one, else ext8."""
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if len(data) in fixed:
        return Raw(bytes([fixed[len(data)], code & 0xFF]) + data)
    return Raw(bytes([0xC7, len(data), code & 0xFF]) + data)


EXTENSIONS = st.sampled_from(
    [
        ext(-1, struct.pack(">I", 0)),  # a timestamp, 32-bit
        ext(-1, struct.pack(">Q", 1 << 34)),  # a timestamp, 64-bit
        ext(-1, struct.pack(">Q", (999_999_999 + 1) << 34)),  # 64-bit, nanoseconds out of range
        ext(-1, struct.pack(">Iq", 0, -1)),  # a timestamp, 96-bit
        ext(-1, b"\x00\x00\x00"),  # a timestamp of no size msgpack knows
        ext(1, b"x"),
        ext(5, b"\x00" * 16),
        ext(42, b"abc"),
        Raw(b"\xc8\x00\x01\x07z"),  # ext16
        Raw(b"\xc9\x00\x00\x00\x00\x07"),  # ext32, empty
    ]
)

EDGE_INTS = [0, 1, 2, 3, 7, 127, 128, 255, 256, 2**31, 2**32, 2**63 - 1, 2**63, UINT64_MAX, MAX_POINTS, MAX_POINTS + 1]
EDGE_INTS += [-1, -32, -33, -(2**63)]
ints = st.sampled_from(EDGE_INTS) | st.integers(-(2**63), UINT64_MAX)
floats = st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.5, 1e300, -1.0, math.inf, -math.inf, math.nan]) | st.floats()
texts = st.sampled_from(["", "numpy", "python", "a\nb", "line\r", "é", "x" * 4096, "x" * 4097]) | st.text(max_size=6)
NOT_UTF8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"nump\xf0"]).map(RawStr)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    floats,
    texts,
    st.binary(max_size=6),
    NOT_UTF8,
    EXTENSIONS,
)
FIELD_KEYS = sorted({name for names in new_messages.FIELD_NAMES.values() for name in names} | {"type"})
KEYS = st.sampled_from([*FIELD_KEYS, "", "extra", "ID"])
map_keys = KEYS | KEYS.map(str.encode) | st.sampled_from([0, -1, None, 1.5]) | NOT_UTF8
hostile = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.lists(st.tuples(map_keys, inner), max_size=3).map(dict),
    max_leaves=8,
)
"""Any msgpack value at all (the str and bin keys of a nested map among them)."""


def nested(depth: int, leaf: Any = 1) -> Any:
    """``depth`` levels of arrays around ``leaf`` (a map is level 1 of a frame)."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


deep = st.integers(new_messages.MAX_DEPTH - 2, new_messages.MAX_DEPTH + 1).map(nested)
nasty = st.one_of(
    hostile,
    deep,
    st.integers(new_messages.MAX_DEPTH - 2, new_messages.MAX_DEPTH + 1).map(lambda d: {"k": nested(d)}),
    st.sampled_from([Raw(b"\xc1"), Raw(b"\xa5ab"), Raw(b"\x92\x01"), Raw(b"\xcd\x01")]),  # unused byte, truncated
)

# --------------------------------------------------------------------------- messages

IDS = st.integers(0, 6) | st.sampled_from([UINT64_MAX, 2**63])
uint64 = st.sampled_from([0, 1, 2, 2**32, 2**63, UINT64_MAX]) | st.integers(0, UINT64_MAX)
points = st.sampled_from([0, 1, 10, 1000, MAX_POINTS]) | st.integers(0, MAX_POINTS)
positive = st.sampled_from([1, 2, 3, 64, 1 << 20, UINT64_MAX]) | st.integers(1, UINT64_MAX)
kernel = st.sampled_from(["numpy", "python", "numba"]) | texts
names = st.lists(kernel, max_size=4) | st.sampled_from([["x"] * 65, ["numpy", 1]])
versions = st.sampled_from([[1], [2], [1, 2], [2, 1], [3], [1, 2, 3]]) | st.lists(ints, max_size=4)
counts = st.lists(st.integers(0, 1000), max_size=4) | st.lists(ints, max_size=3) | st.just([0] * 4097)
seconds = floats | ints
line = texts | st.just("one line")

VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": IDS,
    "seed": uint64,
    "stream": uint64,
    "points": st.sampled_from([0, 1, 10, 1000]) | points,
    "kernel": st.sampled_from(["numpy"] * 3 + ["python"]) | kernel,
    "streams": st.sampled_from([1, 2, 3]) | positive,
    "group": st.none() | st.sampled_from([1, 2, 3]) | positive,
    "versions": versions,
    "client": texts,
    "expected_points": st.none() | uint64,
    "version": st.sampled_from([1, 2, 3]),
    "worker": texts,
    "pid": uint64,
    "host": texts,
    "kernels": names,
    "max_inflight": st.sampled_from([1, 2, 8]) | positive,
    "max_frame": st.sampled_from([40, 64, 1 << 20]) | positive,
    "max_points": st.sampled_from([1, 1000, MAX_POINTS]) | points,
    "jobs": st.sampled_from([1, 2, 8, 1025]) | positive,
    "implementations": names,
    "inside": st.sampled_from([0, 1, 5, 10, 1000]) | uint64,
    "elapsed_s": seconds,
    "insides": st.none() | counts,
    "implementation": texts,
    "code": st.sampled_from([str(code) for code in new_messages.ErrorCode]) | texts,
    "message": line,
}
"""Each field's values: mostly what its rule takes, with the edges on both sides."""

COORDINATOR_TYPES = ["hello", "sample", "ping", "cancel", "shutdown"]
REQUESTS = ["sample"] * 8 + ["ping", "ping", "cancel", "cancel", "hello", "shutdown"]
"""A coordinator's messages as a stream that goes on a while has them."""
WORKER_TYPES = ["welcome", "result", "pong", "error"]
TYPES: dict[str, Any] = {cls.TYPE: cls for cls in new_messages.FIELDS}


MUTATIONS = ["type swap", "hostile value", "type swap", "other value", "type swap", "missing", "unknown key"]
MUTATIONS += ["repeat", "bin key", "odd key", "shuffle"]


@st.composite
def mutated(draw: st.DrawFn, message: dict[str, Any]) -> bytes:
    """``message`` as a msgpack map, mostly as it is, sometimes with a few of
    ``MUTATIONS`` (a field's value of another msgpack type, hostile or another valid one, a key missing, unknown,
    twice or given as bin, the keys in another order), in any map encoding."""
    pairs: list[tuple[Any, Any]] = list(message.items())
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2, 3]))):
        how = draw(st.sampled_from(MUTATIONS))
        index = draw(st.integers(0, max(len(pairs) - 1, 0)))
        if how == "unknown key":
            key = draw(KEYS)
            pairs.insert(index, (key, draw(VALID_FIELDS.get(key, nasty) | st.sampled_from(TYPE_EDGES) | nasty)))
        elif how == "odd key":
            pairs.insert(index, (draw(map_keys), draw(scalars)))
        elif not pairs:
            continue
        elif how == "hostile value":
            pairs[index] = (pairs[index][0], draw(nasty))
        elif how == "type swap":
            pairs[index] = (pairs[index][0], draw(st.sampled_from(TYPE_EDGES)))
        elif how == "other value":
            key = pairs[index][0]
            pairs[index] = (key, draw(VALID_FIELDS.get(key, nasty)))
        elif how == "missing":
            del pairs[index]
        elif how == "repeat":
            key, value = pairs[index]
            pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(st.just(value) | nasty)))
        elif how == "bin key":
            key, value = pairs[index]
            pairs[index] = (key.encode() if isinstance(key, str) else key, value)
        else:
            draw(st.randoms(use_true_random=False)).shuffle(pairs)
    return raw_map(draw, pairs, draw(st.sampled_from([0, 0, 0, 0, 1, 2])))


@st.composite
def body(draw: st.DrawFn, kinds: list[str]) -> bytes:
    """One msgpack map: mostly a valid message of ``kinds`` (or of the other side's, or a
    map of no known type), then perhaps ``mutated``."""
    which = draw(st.integers(0, 9))
    other = st.sampled_from([*TYPES, "bogus"]) if which < 9 else nasty
    kind: Any = draw(st.sampled_from(kinds) if which < 7 else other)
    if isinstance(kind, str) and kind in TYPES:
        return draw(mutated(draw(valid_message([kind]))))
    return draw(mutated({"type": kind, "id": draw(IDS)}))


@st.composite
def frame(draw: st.DrawFn, kinds: list[str], limit: int = new_messages.MAX_FRAME) -> bytes:
    """One frame: mostly a length and a map, sometimes a frame broken as a frame (its
    length zero, over ``limit`` or the protocol's, short of its body; two objects, or
    something not a map, in its body)."""
    how = draw(st.sampled_from(["map"] * 12 + ["zero", "too large", "short", "long", "two", "not a map", "cut"]))
    if how == "zero":
        return b"\x00\x00\x00\x00"
    if how == "too large":
        size = draw(st.sampled_from([limit + 1, new_messages.MAX_FRAME + 1, 2**32 - 1, int.from_bytes(b"hell")]))
        return struct.pack(">I", size) + b"\x80"
    payload = draw(body(kinds))
    if how == "two":
        payload += draw(body(kinds) | st.just(b"\xc0"))
    elif how == "not a map":
        payload = draw(raw(draw(nasty)))
    elif how == "cut":
        payload = payload[: draw(st.integers(0, len(payload)))] or b"\xc1"
    size = len(payload)
    if how == "short":
        size = draw(st.integers(0, size))
    elif how == "long":
        size += draw(st.integers(1, 8))
    return struct.pack(">I", size) + payload


def message_frame(message: dict[str, Any]) -> bytes:
    payload: bytes = msgpack.packb(message)
    return struct.pack(">I", len(payload)) + payload


@st.composite
def reads(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """``stream`` cut into reads: anywhere, or a byte a read."""
    if rarely(draw, 6):
        return [stream[i : i + 1] for i in range(len(stream))]
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=8))
    edges = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges) if b > a] or [b""]


# --------------------------------------------------------------------------- the decoder


def drain_old(decoder: Any) -> list[Any]:
    """Every outcome of ``next_message`` until it needs data or the stream broke."""
    found: list[Any] = []
    while True:
        try:
            message = decoder.next_message()
        except old_messages.RequestError as error:
            found.append(("raised", plain(error)))
            continue
        except old_messages.FatalProtocolError as error:
            found.append(("raised", plain(error)))
            return found
        if message is old_framing.NEED_DATA:
            return found
        found.append(("returned", plain(message)))


def drain_new(decoder: Any) -> list[Any]:
    """Every outcome of ``next_messages`` until it returns none or the stream broke."""
    found: list[Any] = []
    while True:
        try:
            messages = decoder.next_messages()
        except new_messages.RequestError as error:
            found.append(("raised", plain(error)))
            continue
        except new_messages.FatalProtocolError as error:
            found.append(("raised", plain(error)))
            return found
        if not messages:
            return found
        found += [("returned", plain(message)) for message in messages]


@FUZZ
@given(data=st.data(), side=st.sampled_from(["worker", "coordinator"]), limit=st.sampled_from([64, 1 << 20]))
def test_the_decoder_decides_every_stream_as_before(data: st.DataObject, side: str, limit: int) -> None:
    kinds = COORDINATOR_TYPES if side == "worker" else WORKER_TYPES
    frames = data.draw(st.lists(frame(kinds, limit), min_size=1, max_size=6))
    stream = b"".join(frames)
    old, new = decoders(side, limit)
    for chunk in data.draw(reads(stream)):
        old.feed(chunk)
        new.feed(chunk)
        assert drain_new(new) == drain_old(old)
        assert (new.buffered, new.at_frame_boundary) == (old.buffered, old.at_frame_boundary)
    assert outcome(new.feed_eof) == outcome(old.feed_eof)


@FUZZ
@given(data=st.data(), side=st.sampled_from(["worker", "coordinator"]))
def test_a_read_of_good_frames_around_a_bad_one_is_decided_as_before(data: st.DataObject, side: str) -> None:
    """Valid frames, a bad one among them, in one read: those before it are returned as
    before, in order, and the bad one refused as before."""
    kinds = COORDINATOR_TYPES if side == "worker" else WORKER_TYPES
    good = [message_frame(m) for m in data.draw(st.lists(valid_message(kinds), min_size=1, max_size=5))]
    bad = data.draw(frame(kinds))
    good.insert(data.draw(st.integers(0, len(good))), bad)
    old, new = decoders(side)
    old.feed(b"".join(good))
    new.feed(b"".join(good))
    assert drain_new(new) == drain_old(old)


FALLBACK: dict[str, Any] = {
    "id": 1, "seed": 0, "stream": 0, "points": 10, "kernel": "numpy", "streams": 2, "group": 1,
    "versions": [1, 2], "client": "c", "expected_points": 5, "version": 2, "worker": "w", "pid": 1,
    "host": "h", "kernels": ["numpy"], "max_inflight": 8, "max_frame": 1 << 20, "max_points": MAX_POINTS,
    "jobs": 1, "implementations": ["numpy-x"], "inside": 0, "elapsed_s": 0.5, "insides": [0],
    "implementation": "numpy-x", "code": "busy", "message": "m",
}  # fmt: skip
"""A value each field's rule takes, for a draw of ``VALID_FIELDS`` that it does not."""


@FUZZ
@given(data=st.data(), side=st.sampled_from(["worker", "coordinator"]))
def test_a_valid_message_with_keys_of_its_own_or_not_is_decided_as_before(data: st.DataObject, side: str) -> None:
    """4812407's claim, aimed at: a fixmap whose keys are all its message's own skips the
    plain-data scan, since each value then meets its field's rule. So a valid message
    given keys that are not its own (another message's field, an unknown name, a bin or
    non-UTF-8 key) holding anything (an extension, nesting past ``MAX_DEPTH``, a nested
    map with a key twice or a bin key) must be decided as before, alone and in a read
    between good frames."""
    kinds = COORDINATOR_TYPES if side == "worker" else WORKER_TYPES
    message = data.draw(valid_message(kinds))
    pairs: list[tuple[Any, Any]] = list(message.items())
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(KEYS | map_keys)
        pairs.insert(data.draw(st.integers(0, len(pairs))), (key, data.draw(st.sampled_from(TYPE_EDGES) | nasty)))
    payload = raw_map(data.draw, pairs, data.draw(st.sampled_from([0, 0, 1, 2])))
    bad = struct.pack(">I", len(payload)) + payload
    good = message_frame(data.draw(valid_message(kinds)))
    for stream in (bad, good + bad + good):
        old, new = decoders(side)
        old.feed(stream)
        new.feed(stream)
        assert drain_new(new) == drain_old(old)


@st.composite
def valid_message(draw: st.DrawFn, kinds: list[str]) -> dict[str, Any]:
    """A map the field table takes, of one of ``kinds`` (optional fields sometimes left out)."""
    kind = draw(st.sampled_from(kinds))
    cls = TYPES[kind]
    message: dict[str, Any] = {"type": kind}
    for name, rule in new_messages.FIELDS[cls].items():
        if name in new_messages.OPTIONAL_FIELDS[cls] and draw(st.booleans()):
            continue
        value = draw(VALID_FIELDS[name])
        message[name] = value if rule.valid(value) else FALLBACK[name]
    return message


@st.composite
def stream_frame(draw: st.DrawFn, kinds: list[str], limit: int = new_messages.MAX_FRAME) -> bytes:
    """A frame of a stream that goes on a while: mostly a valid message of ``kinds``,
    sometimes any ``frame`` at all."""
    if not rarely(draw, 5):
        return message_frame(draw(valid_message(kinds)))
    return draw(frame(kinds, limit))


TYPE_EDGES: list[Any] = [
    True, False, None, 0, 1, -1, 2**63, UINT64_MAX, -(2**63), MAX_POINTS + 1, float(2**64), 1.0, 0.0, -0.0, math.nan,
    math.inf, 1e300, "", "1", "numpy", "a\nb", b"", b"1", b"numpy", RawStr(b"\xff"), [], [1], [True], [1.0],
    ["numpy"], [[1]], [None], {}, {"a": 1}, {b"a": 1}, [0] * 65, ["x"] * 65,
    ext(-1, struct.pack(">I", 0)), ext(-1, struct.pack(">Iq", 0, 1)), ext(3, b"x"), Raw(b"\xc1"),
    Raw(b"\xcf" + struct.pack(">Q", UINT64_MAX)), Raw(b"\xd3" + struct.pack(">q", 1)), Raw(b"\xcd\x00\x01"),
    Raw(b"\xca" + struct.pack(">f", 1.0)), Raw(b"\xd9\x05numpy"), Raw(b"\xdb\x00\x00\x00\x05numpy"),
    Raw(b"\xdc\x00\x01\x01"), Raw(b"\xdd\x00\x00\x00\x01\x01"), Raw(b"\x82\xa1a\x01\xa1a\x02"),
    Raw(b"\x81\x01\x02"), nested(new_messages.MAX_DEPTH - 1), nested(new_messages.MAX_DEPTH),
    {"a": nested(new_messages.MAX_DEPTH - 2)}, {"a": nested(new_messages.MAX_DEPTH - 1)},
]  # fmt: skip
"""A value of each msgpack type, and each encoding of a valid one, that every field is
given in turn by ``test_every_field_takes_and_refuses_each_msgpack_type_as_before`` (2**64
itself is no msgpack integer: it comes as the float it is)."""

BASE: dict[str, dict[str, Any]] = {
    kind: {"type": kind, **{name: FALLBACK[name] for name in new_messages.FIELD_NAMES[cls]}}
    for kind, cls in TYPES.items()
}
"""A valid message of each type, every field given."""
BASE["error"]["id"] = 3


def _canonical(value: Any) -> bytes:
    """``value`` in msgpack, each part in its smallest encoding (``Raw``, ``RawStr`` as given)."""
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, RawStr):
        return raw_header(len(value.data), 0xA0, 31, (0xD9, 0xDA, 0xDB), 0) + value.data
    if isinstance(value, list):
        return raw_header(len(value), 0x90, 15, (None, 0xDC, 0xDD), 0) + b"".join(map(_canonical, value))
    if isinstance(value, dict):
        items = [_canonical(k) + _canonical(v) for k, v in value.items()]
        return raw_header(len(items), 0x80, 15, (None, 0xDE, 0xDF), 0) + b"".join(items)
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _frame_of(pairs: list[tuple[Any, Any]], form: int = 0) -> bytes:
    items = [_canonical(k) + _canonical(v) for k, v in pairs]
    payload = raw_header(len(items), 0x80, 15, (None, 0xDE, 0xDF), form) + b"".join(items)
    return struct.pack(">I", len(payload)) + payload


def decoders(side: str, limit: int = new_messages.MAX_FRAME) -> tuple[Any, Any]:
    """A ``FrameDecoder`` of each core (the old, the live) for ``side``'s receiving end."""
    if side == "worker":
        accept = (old_messages.COORDINATOR_MESSAGES, new_messages.COORDINATOR_MESSAGES)
    else:
        accept = (old_messages.WORKER_MESSAGES, new_messages.WORKER_MESSAGES)
    return old_framing.FrameDecoder(accept[0], limit), new_framing.FrameDecoder(accept[1], limit)


def _decide_both(side: str, data: bytes) -> None:
    old, new = decoders(side)
    old.feed(data)
    new.feed(data)
    assert drain_new(new) == drain_old(old), data


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_every_field_takes_and_refuses_each_msgpack_type_as_before(kind: str) -> None:
    """Each field of each message, given each of ``TYPE_EDGES`` (and left out, and
    given twice), alone in its frame and between two valid frames in one read, in a
    fixmap and a map16: decided as before. Exhaustive where the fuzzing above samples."""
    side = "worker" if kind in COORDINATOR_TYPES else "coordinator"
    base: list[tuple[Any, Any]] = list(BASE[kind].items())
    good = _frame_of(base)
    for index, (name, _) in enumerate(base):
        variants = [[*base[:index], (name, edge), *base[index + 1 :]] for edge in TYPE_EDGES]
        variants.append(base[:index] + base[index + 1 :])  # the field left out
        variants += [[*base, (name, edge)] for edge in TYPE_EDGES[:8]]  # the field twice
        variants.append([(name.encode() if i == index else k, v) for i, (k, v) in enumerate(base)])  # a bin key
        for pairs in variants:
            for form in (0, 1):
                bad = _frame_of(pairs, form)
                _decide_both(side, bad)
                _decide_both(side, good + bad + good)
    for key in ("extra", "", b"id", 0, RawStr(b"\xff")):
        for edge in TYPE_EDGES:
            _decide_both(side, good + _frame_of([*base, (key, edge)]) + good)


# --------------------------------------------------------------------------- the worker's end


def offers(draw: Draw) -> tuple[dict[str, Any], int]:
    """A worker's offer (as keyword arguments) and its jobs."""
    max_inflight = draw(st.integers(1, 4))
    kwargs: dict[str, Any] = {
        "worker": "fuzz",
        "pid": 7,
        "host": "h",
        "kernels": draw(st.sampled_from([("numpy",), ("numpy", "python")])),
        "max_inflight": max_inflight,
        "max_points": draw(st.sampled_from([MAX_POINTS, 1000])),
        "max_frame": draw(st.sampled_from([new_messages.MAX_FRAME] * 4 + [48, 200])),
        "versions": draw(st.sampled_from([(1, 2)] * 4 + [(1,), (2,)])),
    }
    return kwargs, draw(st.integers(1, max_inflight))


@dataclasses.dataclass(frozen=True)
class PerCore:
    """An argument that differs between the cores: the live core's, the old core's."""

    new: Any
    old: Any


def call(end: Any, method: str, args: tuple[Any, ...], core: int) -> Callable[[], Any]:
    """``end.method(*args)``, each ``PerCore`` argument the one of ``core`` (0 the live
    core, 1 the old); a keyword argument is given as a ``dict`` last."""
    values = [(arg.new, arg.old)[core] if isinstance(arg, PerCore) else arg for arg in args]
    kwargs: dict[str, Any] = values.pop() if values and isinstance(values[-1], dict) else {}
    return lambda: getattr(end, method)(*values, **kwargs)


class Pair:
    """An end of each core (``new``, ``old``), driven alike."""

    new: Any
    old: Any

    def both(self, method: str, *args: Any) -> None:
        """``method`` of each end called with ``args`` (each ``PerCore`` one its core's
        own); then what it returned or raised, and everything the ends show, held equal."""
        self.each((method, *args), (method, *args))

    def each(self, new_call: tuple[Any, ...], old_call: tuple[Any, ...]) -> None:
        """``both``, for calls that differ: (method, *args) for each end."""
        new = outcome(call(self.new, new_call[0], new_call[1:], 0))
        assert new == outcome(call(self.old, old_call[0], old_call[1:], 1))
        assert self.snapshot(self.new) == self.snapshot(self.old)

    @staticmethod
    def snapshot(end: Any) -> Any:
        raise NotImplementedError


class WorkerPair(Pair):
    """The old and the live ``WorkerEnd`` of one offer."""

    def __init__(self, offer: dict[str, Any], jobs: int) -> None:
        self.old = old_worker.WorkerEnd(old_worker.WorkerOffer(**offer), jobs=jobs, record=True)
        self.new = new_worker.WorkerEnd(new_worker.WorkerOffer(**offer), jobs=jobs, record=True)

    @staticmethod
    def snapshot(end: Any) -> Any:
        return (
            plain(end.state),
            end.data_to_send(),
            plain(end.end),
            plain(end.hello),
            plain(end.welcome),
            plain(end.received),
            plain(end.sent),
            end.running,
            end.outstanding,
            sorted(end._running),
            list(end._queued),
        )


HELLO = st.builds(
    lambda versions, expected: message_frame({"type": "hello", "versions": versions, "client": "c", **expected}),
    st.sampled_from([[1, 2]] * 4 + [[2], [1], [3]]),
    st.just({}) | st.just({"expected_points": 10**6}),
)


@FUZZ
@given(data=st.data())
def test_a_worker_end_answers_every_stream_as_before(data: st.DataObject) -> None:
    offer, jobs = offers(data.draw)
    pair = WorkerPair(offer, jobs)
    frames = data.draw(st.lists(stream_frame(REQUESTS, offer["max_frame"]), min_size=1, max_size=12))
    if not rarely(data.draw, 5):
        frames.insert(0, data.draw(HELLO))
    for chunk in data.draw(reads(b"".join(frames))):
        pair.both("receive_data", chunk)
        for _ in range(data.draw(st.integers(0, 2))):
            act = data.draw(st.sampled_from(["finish", "finish", "fail", "wrong counts"]))
            running = sorted(pair.new._running)
            request_id = data.draw(st.sampled_from(running)) if running else data.draw(IDS)
            sample = pair.new._running.get(request_id)
            groups = sample.groups if sample is not None else 1
            if act == "finish":
                insides = [0] * groups
                pair.both("sample_finished", request_id, insides, 0.5, "numpy")
            elif act == "wrong counts":
                insides = [1] * (groups + 1)
                pair.both("sample_finished", request_id, insides, 0.5)
            elif act == "fail":
                code = data.draw(st.sampled_from(["cancelled", "internal"]))
                codes = PerCore(new_messages.ErrorCode(code), old_messages.ErrorCode(code))
                pair.both("sample_failed", request_id, codes, "stopped")
    last = data.draw(st.sampled_from(["eof", "nothing", "eof", "nothing", "output lost", "internal"]))
    if last == "eof":
        pair.both("receive_eof")
    elif last == "output lost":
        pair.both("output_lost")
    elif last == "internal":
        pair.both("fail_internal", "a bug")
    event(f"worker end: {pair.new.state.value}, {len(pair.new.received or ())} received")
    event(f"reason: {pair.new.end.reason[:70] if pair.new.end else None}")


# --------------------------------------------------------------------------- the coordinator's end


STEPS = ["read", "sample", "checked", "read", "range", "ping", "checked", "read", "cancel", "advance"]
"""What a coordinator's driver does next, mostly (``shutdown``, ``eof``, ``fail`` rarely)."""


def budget(work: int) -> float:
    """A task budget of the work alone (both cores ask it with the same work)."""
    return 1.0 + work / 1e6


class CoordinatorPair(Pair):
    """The old and the live ``CoordinatorEnd``."""

    def __init__(self, versions: tuple[int, ...], expected: int | None) -> None:
        self.old = old_coordinator.CoordinatorEnd(
            client="fuzz", task_budget=budget, versions=versions, expected_points=expected
        )
        self.new = new_coordinator.CoordinatorEnd(
            client="fuzz", task_budget=budget, versions=versions, expected_points=expected
        )

    @staticmethod
    def snapshot(end: Any) -> Any:
        return (
            plain(end.state),
            end.data_to_send(),
            plain(end.welcome),
            plain(end.broken),
            end.in_flight,
            end.usable,
            end.jobs_shown,
            end.next_deadline(),
            list(end._samples),
            [(r.running, r.abandoned, r.points) for r in end._samples.values()],
            list(end._pings),
        )


def welcome_frame(draw: Draw, versions: tuple[int, ...]) -> bytes:
    kernels = draw(st.sampled_from([["numpy"], ["numpy", "python"]]))
    welcome: dict[str, Any] = {
        "type": "welcome",
        "version": draw(st.sampled_from([max(versions)] * 6 + [1, 2, 3])),
        "worker": "w",
        "pid": 1,
        "host": "h",
        "kernels": kernels,
        "max_inflight": draw(st.sampled_from([8, 8, 8, 2])),
        "max_frame": draw(st.sampled_from([new_messages.MAX_FRAME, 64])),
        "max_points": draw(st.sampled_from([MAX_POINTS, 1000])),
        "jobs": draw(st.sampled_from([1, 2, 1, 2, 3])),
    }
    if draw(st.booleans()):
        welcome["implementations"] = ["numpy-x"] * len(kernels)
    return message_frame(welcome)


def answer(draw: Draw, end: Any) -> dict[str, Any]:
    """A worker's answer, mostly to a request in flight on ``end`` (the live end: both
    hold the same requests, the snapshots say), mostly right: a result of its points
    and counts per group, a pong to a ping, a per-request error."""
    in_flight = [*end._samples.items(), *end._pings.items()]
    if in_flight and not rarely(draw, 5):
        request_id, request = draw(st.sampled_from(in_flight))
    else:
        request_id, request = draw(st.integers(0, 8)), None
    kind = "pong" if request is not None and request.is_ping else "result"
    kind = draw(st.sampled_from([kind] * 6 + ["result", "pong", "error", "error"]))
    if kind == "result":
        size = request.points if request is not None and not request.is_ping else draw(VALID_FIELDS["points"])
        sample = request.sample if request is not None else None
        insides = [0] * sample.groups if sample is not None and sample.is_range else None
        inside = 0 if insides is not None else draw(st.integers(0, min(size, 3)))
        message: dict[str, Any] = {
            "type": "result",
            "id": request_id,
            "inside": inside,
            "points": size,
            "elapsed_s": draw(st.sampled_from([0.0, 0.25, 3.0, 1e300])),
        }
        if insides is not None:
            message["insides"] = insides
        elif rarely(draw, 12):
            message["insides"] = [inside]
        if draw(st.booleans()):
            message["implementation"] = "numpy-x"
        return message
    if kind == "pong":
        return {"type": "pong", "id": request_id}
    code = draw(st.sampled_from(["busy", "cancelled", "internal", "unknown_kernel", "malformed_frame"]))
    return {"type": "error", "id": draw(st.just(request_id) | st.none()), "code": code, "message": "no"}


@st.composite
def worker_frames(draw: st.DrawFn, end: Any) -> bytes:
    """A frame of a worker's answer to ``end`` (``answer``, ``mutated`` perhaps), or any
    frame a worker could send at all."""
    if not rarely(draw, 6):
        payload = draw(mutated(answer(draw, end)))
        return struct.pack(">I", len(payload)) + payload
    return draw(frame(WORKER_TYPES))


@FUZZ
@given(data=st.data())
def test_a_coordinator_end_judges_every_stream_as_before(data: st.DataObject) -> None:
    versions = data.draw(st.sampled_from([(1, 2)] * 4 + [(2,), (1,)]))
    pair = CoordinatorPair(versions, data.draw(st.none() | st.just(10**9)))
    now = 0.0
    if not rarely(data.draw, 6):
        welcome = welcome_frame(data.draw, versions)
        for chunk in data.draw(reads(welcome)):
            pair.both("receive_data", chunk, now)
    for _ in range(30):
        now += data.draw(st.sampled_from([0.0, 0.125, 1.0, 5.0]))
        act = data.draw(st.sampled_from(STEPS))
        if rarely(data.draw, 12):
            act = data.draw(st.sampled_from(["shutdown", "eof", "fail", "stop"]))
        if act == "read" and not pair.new.in_flight and not rarely(data.draw, 4):
            act = "sample"  # an answer to nothing in flight breaks the connection: sometimes
        if act in ("sample", "range"):
            seed, stream = data.draw(uint64), data.draw(st.sampled_from([0, 1, UINT64_MAX]) | uint64)
            size = data.draw(st.sampled_from([0, 1, 10, 1000, 2000, MAX_POINTS, MAX_POINTS + 1]))
            name = data.draw(st.sampled_from(["numpy", "python", "nope", "é" * 4097]))
            streams = data.draw(st.sampled_from([2, 3, 1 << 20, (1 << 20) + 1, 0])) if act == "range" else 1
            group = data.draw(st.sampled_from([None, 1, 2, 0])) if act == "range" else None
            options = {"streams": streams, "group": group, "now": now, "token": ("t", seed)}
            pair.both("send_sample", seed, stream, size, name, options)
        elif act == "checked":
            fields = (
                data.draw(uint64),
                data.draw(st.sampled_from([0, 1, 2])),
                data.draw(st.sampled_from([0, 1, 10, 1000, 2000])),
                data.draw(st.sampled_from(["numpy", "python", "nope"])),
                data.draw(st.sampled_from([1, 1, 2, 3])),
            )
            # The old core's send_sample(fields_checked=True) is what send_checked took over.
            as_before = {"streams": fields[4], "group": None if fields[4] == 1 else 1, "fields_checked": True}
            pair.each(
                ("send_checked", Chunk(*fields), {"now": now, "token": "c"}),
                ("send_sample", *fields[:4], {**as_before, "now": now, "token": "c"}),
            )
        elif act == "ping":
            pair.both("send_ping", {"now": now, "token": "p"})
        elif act == "cancel":
            request_id = data.draw(st.integers(0, 6))
            pair.both("cancel", request_id)
        elif act == "read":
            stream_ = b"".join(data.draw(st.lists(worker_frames(pair.new), min_size=1, max_size=4)))
            for chunk in data.draw(reads(stream_)):
                pair.both("receive_data", chunk, now)
        elif act == "advance":
            pair.both("advance", now)
        elif act == "shutdown":
            pair.both("shutdown")
        elif act == "eof":
            pair.both("receive_eof", now)
            break
        elif act == "fail":
            pair.both("fail", "gone")
        elif act == "stop":
            break
    event(f"coordinator end: {pair.new.state.value}")
    event(f"broken: {pair.new.broken.reason[:60] if pair.new.broken else None}")


# --------------------------------------------------------------------------- encoding


def message_pairs(draw: Draw) -> tuple[Any, Any]:
    """One message of any type, valid or not, built by each core's class."""
    kind = draw(st.sampled_from(sorted(TYPES)))
    cls = TYPES[kind]
    values = {}
    for name, rule in new_messages.FIELDS[cls].items():
        if name in new_messages.OPTIONAL_FIELDS[cls] and draw(st.booleans()):
            continue
        value = draw(VALID_FIELDS[name])
        if rule.convert is tuple and isinstance(value, list) and draw(st.booleans()):
            value = tuple(value)
        values[name] = value
    return cls(**values), getattr(old_messages, cls.__name__)(**values)


@FUZZ
@given(data=st.data())
def test_every_message_is_encoded_as_before(data: st.DataObject) -> None:
    new, old = message_pairs(data.draw)
    assert outcome(lambda: new_framing.encode(new)) == outcome(lambda: old_framing.encode(old))
    assert (new_messages.field_problem(new)) == old_messages.field_problem(old)


@FUZZ
@given(
    request_id=uint64,
    seed=uint64,
    stream=uint64,
    size=points,
    name=kernel,
)
def test_a_plain_sample_is_encoded_as_before(request_id: int, seed: int, stream: int, size: int, name: str) -> None:
    old = outcome(lambda: old_framing.encode(old_messages.Sample(request_id, seed, stream, size, name)))
    assert outcome(lambda: new_framing.encode_plain_sample(request_id, seed, stream, size, name)) == old


def _shown(docstring: str | None) -> str:
    """The code block of ``docstring`` (after its ``::``), dedented."""
    assert docstring is not None
    block = docstring.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    return textwrap.dedent(block)


def test_the_generated_code_is_what_the_docstrings_show() -> None:
    """The parsers and encoders made with ``exec`` are readable where they are made: their
    docstrings show one, and each keeps its source as its ``__doc__``."""
    assert _shown(new_messages._unrolled_parser.__doc__) == new_messages._PARSERS[new_messages.Hello].__doc__
    assert _shown(new_framing._unrolled_body.__doc__) == new_framing._BODIES[new_messages.Result].__doc__


FROZEN_BLOBS = {
    "messages": "8567127f189c66220459cbd23caa7f7341c4ae2c",
    "framing": "129802d6c747cef596672e9b360ce165fe2f87dd",
    "admission": "9cacd6eba2597c3bff5a0f9938748cfd8b3e6098",
    "worker_end": "e0fc16921a641db40948abb2ce11119086a20242",
    "coordinator_end": "cff56854b8bcb7867a246b22e6f2d13ba434e427",
}
"""``git rev-parse 8f387ac:mcpi_worker/protocol/<module>.py``: the git blob of each module."""


@pytest.mark.parametrize("module", sorted(FROZEN_BLOBS))
def test_the_frozen_core_is_8f387ac_s(module: str) -> None:
    """The reference is what it says: each module of the copy, its imports named back,
    is byte for byte the one at 8f387ac (its git blob id; no history needed)."""
    copy = (Path(core_8f387ac.__file__).parent / f"{module}.py").read_bytes()
    original = copy.replace(b"from core_8f387ac.constants import", b"from mcpi_worker.constants import")
    original = original.replace(b"from core_8f387ac.", b"from mcpi_worker.protocol.")
    blob = hashlib.sha1(b"blob %d\0" % len(original) + original, usedforsecurity=False).hexdigest()
    assert blob == FROZEN_BLOBS[module]
