"""Frames: a 4-byte big-endian length, then exactly one msgpack map (protocol.md §2–§3).

``encode`` turns a message into one whole frame; ``FrameDecoder`` turns a byte stream
back into validated messages, all-or-nothing per frame, with the size checked before
anything is buffered on purpose.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import Enum
from typing import Any, Final, NoReturn

import msgpack

from mcpi_worker.protocol.messages import (
    FIELD_NAMES,
    HEADER,
    MAX_DEPTH,
    MAX_FRAME,
    OPTIONAL_FIELDS,
    ErrorCode,
    FatalProtocolError,
    LocalProtocolError,
    Message,
    Sample,
    parse_message,
    parse_own_fields,
)

_REQUIRED: Final = object()

_ENCODING: Final[dict[type, tuple[tuple[str, Any], ...]]] = {
    cls: tuple((name, OPTIONAL_FIELDS[cls].get(name, _REQUIRED)) for name in names)
    for cls, names in FIELD_NAMES.items()
}
"""Each message class's wire fields in order, with the value whose absence a field means
(``_REQUIRED``: always sent), worked out once: encoding is on every request's path."""

_HEADER_SIZE: Final[int] = HEADER.size
_unpack_header: Final = HEADER.unpack_from
_pack_header: Final = HEADER.pack
_unpackb: Final = msgpack.unpackb
_SAMPLE: Final[str] = Sample.TYPE

_packers = threading.local()
"""A ``msgpack.Packer`` per thread, kept: ``packb`` builds one per call, which cost as
much as the rest of encoding a ``sample``. Per thread, because a worker encodes on its
reader and its compute threads."""


def _packer() -> msgpack.Packer:
    packer: msgpack.Packer | None = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)  # what packb(use_bin_type=True) uses
    return packer


def _unrolled_body(cls: type[Message]) -> Callable[[Any], dict[str, Any]]:
    """The map a ``cls`` message is sent as: ``type``, then its fields in wire order, an
    optional one left out when it has the value its absence means (which keeps version
    1's frames as they were): ``_ENCODING`` written out for ``cls`` alone, made once at
    import as ``messages._unrolled_parser`` is (every message sent takes it; the loop's
    turns cost more than the map). A tuple goes as it is: msgpack packs it as the array
    a list would be. Its ``__doc__`` is its source; ``Result``'s, for one
    (tests/protocol/test_core_differential.py holds the two equal)::

        def body(m):
            b = {'type': 'result', 'id': m.id, 'inside': m.inside, 'points': m.points, 'elapsed_s': m.elapsed_s}
            v = m.insides
            if not v == absent4:
                b['insides'] = v
            v = m.implementation
            if not v == absent5:
                b['implementation'] = v
            return b

    (``absent4``, ``absent5``: what a missing ``insides`` and ``implementation`` mean,
    None and "".)"""
    scope: dict[str, Any] = {}
    leading: list[str] = []
    rest: list[str] = []
    for index, (name, absent) in enumerate(_ENCODING[cls]):
        if absent is _REQUIRED and not rest:
            leading.append(f"{name!r}: m.{name}")
        elif absent is _REQUIRED:
            rest.append(f"    b[{name!r}] = m.{name}")
        else:
            scope[f"absent{index}"] = absent
            rest += [f"    v = m.{name}", f"    if not v == absent{index}:", f"        b[{name!r}] = v"]
    lines = ["def body(m):", f"    b = {{'type': {cls.TYPE!r}{''.join(', ' + item for item in leading)}}}", *rest]
    source = "\n".join([*lines, "    return b"])
    exec(source, scope)  # its source: made above from the field table alone
    body: Callable[[Any], dict[str, Any]] = scope["body"]
    body.__doc__ = source  # for a reader: help(), a traceback that says only <string>
    return body


_BODIES: Final[dict[type, Callable[[Any], dict[str, Any]]]] = {cls: _unrolled_body(cls) for cls in FIELD_NAMES}


def encode(message: Message) -> bytes:
    """One complete frame (length prefix included) carrying ``message``.

    Raises ``LocalProtocolError`` for a message too large to send: every text field is
    bounded (``MAX_TEXT``), so only a caller building one by hand gets there.
    """
    packer = getattr(_packers, "packer", None) or _packer()
    payload: bytes = packer.pack(_BODIES[type(message)](message))
    if len(payload) > _LIMIT and (problem := frame_problem(len(payload))) is not None:
        raise LocalProtocolError(f"refusing to send a {len(payload)}-byte frame: {problem}")
    return _pack_header(len(payload)) + payload


_PLAIN_SAMPLE_KEYS: Final = FIELD_NAMES[Sample][:5]
_ID, _SEED, _STREAM, _POINTS, _KERNEL = _PLAIN_SAMPLE_KEYS
"""The fields of a plain sample's frame, in wire order: a ``Sample``'s without those a
range adds, whose absence means one stream and no group (``OPTIONAL_FIELDS``)."""


def encode_plain_sample(request_id: int, seed: int, stream: int, points: int, kernel: str) -> bytes:
    """``encode(Sample(request_id, seed, stream, points, kernel))``, byte for byte (the
    tests hold the two equal), without building the ``Sample``: the frame of each plain
    sample a coordinator sends, the one message on every request's path. Its fields
    ``streams`` and ``group`` are at the values their absence means, so they are left
    out, as ``encode`` leaves them. Raises ``LocalProtocolError`` as ``encode`` does."""
    packer = getattr(_packers, "packer", None) or _packer()
    payload: bytes = packer.pack(
        {"type": _SAMPLE, _ID: request_id, _SEED: seed, _STREAM: stream, _POINTS: points, _KERNEL: kernel}
    )
    if len(payload) > _LIMIT and (problem := frame_problem(len(payload))) is not None:
        raise LocalProtocolError(f"refusing to send a {len(payload)}-byte frame: {problem}")
    return _pack_header(len(payload)) + payload


def frame_problem(size: int, max_frame: int = MAX_FRAME) -> str | None:
    """Why a frame body of ``size`` bytes may not go to a receiver that takes at most
    ``max_frame`` (its ``welcome.max_frame``; ``MAX_FRAME`` by default), or None: no
    frame is larger than ``MAX_FRAME``, whatever a receiver announces (protocol.md §2).
    The one statement of the frame-size limit: the encoder, the decoder and every sender
    that checks a frame against a worker's ``max_frame`` ask it (or ``frame_limit``, the
    largest size it lets through, worked out once)."""
    limit = frame_limit(max_frame)
    return None if size <= limit else f"frame of {size} bytes exceeds the {limit}-byte limit"


def frame_limit(max_frame: int = MAX_FRAME) -> int:
    """The largest frame body ``frame_problem`` lets through to a receiver taking at most
    ``max_frame``: for a loop that checks many frames against one receiver's limit."""
    return min(max_frame, MAX_FRAME)


_LIMIT: Final[int] = frame_limit()


class NeedData(Enum):
    """``NEED_DATA`` is returned by ``FrameDecoder.next_message`` when a whole frame has
    not arrived yet (an enum, so that ``message is NEED_DATA`` narrows the type)."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


class _DuplicateKey(ValueError):
    pass


def _map_without_duplicate_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """msgpack keeps the last of two equal keys; the protocol refuses the map instead,
    or two readers of one frame could see two different messages."""
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise _DuplicateKey("a map has the same key twice")
    return mapping


class FrameDecoder:
    """Turns a byte stream into validated messages, one frame at a time.

    ``accept`` is the table of message types this side may receive
    (``COORDINATOR_MESSAGES`` in a worker, ``WORKER_MESSAGES`` in a coordinator).

    - ``feed(data)`` appends bytes; it never parses or raises.
    - ``next_message()`` returns a message, or ``NEED_DATA``; raises ``RequestError``
      for a well-framed but invalid message (the frame is consumed, decoding goes on)
      and ``FatalProtocolError`` when the stream itself is broken.
    - ``next_messages()`` returns every whole frame's message at once (``[]`` for
      ``NEED_DATA``), as calls of ``next_message`` would, and raises as it does.
    - ``feed_eof()`` tells it the stream ended; it raises ``FatalProtocolError`` if
      that happened inside a frame. ``at_frame_boundary`` says whether it would.
    """

    def __init__(self, accept: dict[str, type[Message]], max_frame: int = MAX_FRAME) -> None:
        self._accept = accept
        self._max_frame = max_frame
        self._limit = frame_limit(max_frame)
        self._buffer = bytearray()
        self._error: FatalProtocolError | None = None
        self._eof = False

    @property
    def at_frame_boundary(self) -> bool:
        return not self._buffer

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def broken(self) -> FatalProtocolError | None:
        """The fatal error the stream broke with, once it has."""
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof:
            raise LocalProtocolError("feed() after feed_eof()")
        self._buffer += data

    def feed_eof(self) -> None:
        self._eof = True
        self._raise_if_broken()
        if self._buffer and self._complete_frame_length() is None:
            self._fail(
                ErrorCode.TRUNCATED_FRAME,
                f"stream ended inside a frame ({len(self._buffer)} bytes buffered)",
            )

    def next_message(self) -> Message | NeedData:
        if self._error is not None:  # ``_raise_if_broken``, without a call per frame
            self._raise_if_broken()
        if not self._buffer:  # a read's frames all taken: its last call, without another
            return NEED_DATA
        length = self._complete_frame_length()
        if length is None:
            return NEED_DATA
        payload = bytes(self._buffer[HEADER.size : HEADER.size + length])
        del self._buffer[: HEADER.size + length]
        return self._parse(payload)

    def next_messages(self) -> list[Message]:
        """Every message whose frame is whole in the buffer, in order, or ``[]`` when
        none is (``NEED_DATA``): what calls of ``next_message`` would return one after
        another, decoded in one pass (a read of a pipelined stream brings dozens of
        frames, and a call per frame and per step of it was most of what decoding cost).

        The pass takes the common frame, a fixmap holding no key twice (it decodes to
        as many keys as its header counts) whose keys are all its message's own and
        valid (``parse_own_fields``, which says why that map holds plain data only),
        and stops before any other; that frame is then ``next_message``'s, at the next
        call (at once, if it is the first), which raises what it would have raised for
        it. So the messages before a bad frame are returned first, and the error comes
        after them, as one call at a time would have it. Raises as ``next_message``
        does."""
        if self._error is not None:
            self._raise_if_broken()
        buffer = self._buffer
        size = len(buffer)
        start = 0
        limit = self._limit
        accept = self._accept
        found: list[Message] = []
        while size - start > _HEADER_SIZE:
            (length,) = _unpack_header(buffer, start)
            body_start = start + _HEADER_SIZE
            end = body_start + length
            # A frame not whole yet, or one refused (zero-length, too large, not a
            # fixmap): next_message waits for it, or says what is wrong with it.
            if end > size or not 0 < length <= limit or not 0x80 <= buffer[body_start] <= 0x8F:
                break
            try:
                body = _unpackb(buffer[body_start:end], raw=False, strict_map_key=True, use_list=True)
            except Exception:  # whatever is wrong, next_message says it in its own words
                break
            if type(body) is not dict or len(body) != buffer[body_start] & 0x0F:
                break
            known = parse_own_fields(body, accept)
            if known is None:
                break
            found.append(known)
            start = end
        if found:
            del buffer[:start]
            return found
        message = self.next_message()
        return [] if message is NEED_DATA else [message]

    def _complete_frame_length(self) -> int | None:
        """The body length of the frame at the head of the buffer, once it is all here.

        The size check happens as soon as the 4 header bytes are in, before any body
        byte is buffered on purpose: "hell" read as a length is 1.75 GB, and must be
        refused then, not after a 1.75 GB allocation.
        """
        if len(self._buffer) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buffer)
        if length == 0:
            self._fail(ErrorCode.MALFORMED_FRAME, "zero-length frame")
        if (problem := frame_problem(length, self._max_frame)) is not None:
            self._fail(ErrorCode.FRAME_TOO_LARGE, problem)
        if len(self._buffer) < HEADER.size + length:
            return None
        return int(length)

    def _parse(self, payload: bytes) -> Message:
        if 0x80 <= payload[0] <= 0x8F:  # a fixmap: its count of keys is in its first byte
            body = _flat_map(payload)
            if body is not None:
                return parse_message(body, self._accept)
        try:
            body = msgpack.unpackb(
                payload,
                raw=False,
                strict_map_key=True,
                use_list=True,
                object_pairs_hook=_map_without_duplicate_keys,
            )
        except UnicodeDecodeError:
            self._fail(ErrorCode.MALFORMED_FRAME, "string is not valid UTF-8")
        except _DuplicateKey as exc:
            self._fail(ErrorCode.MALFORMED_FRAME, str(exc))
        except (ValueError, msgpack.UnpackException) as exc:
            # ExtraData, StackError, FormatError, truncated body, non-str keys: all
            # mean the sender is not speaking this protocol.
            # FormatError (a byte such as 0xc1 that begins no object) has no text of its own.
            self._fail(ErrorCode.MALFORMED_FRAME, f"frame is not one msgpack object: {str(exc) or type(exc).__name__}")
        if not isinstance(body, dict):
            self._fail(
                ErrorCode.MALFORMED_FRAME,
                f"frame holds a msgpack {type(body).__name__}, not a map",
            )
        problem = _plain_data_problem(body, depth=1)
        if problem is not None:
            self._fail(ErrorCode.MALFORMED_FRAME, problem)
        return parse_message(body, self._accept)

    def _fail(self, code: ErrorCode, message: str) -> NoReturn:
        self._error = FatalProtocolError(code, message)
        self._buffer.clear()
        raise self._error

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise FatalProtocolError(self._error.code, self._error.message)


_SCALARS: Final = frozenset({type(None), bool, int, float, str, bytes})
"""What msgpack decodes its scalars to (exact types: subclasses are not plain)."""


def _flat_map(payload: bytes | bytearray) -> dict[str, Any] | None:
    """``payload`` decoded, when it is one fixmap (``payload[0]``: 0x80 + its count of
    keys) whose keys are strings, none twice, and whose values are all scalars; None
    for anything else, which ``FrameDecoder._parse`` then decodes with every check.

    The common message (a ``sample``, a ``result`` of a plain sample, a ``ping``) is such
    a map, and for it this is all those checks come to: nothing nested (so no depth, no
    map inside to hold a key twice), and the top-level map held a key twice exactly when
    it decoded to fewer keys than its header counts. It saves decoding through
    ``object_pairs_hook``, a Python call and a list of pairs per map."""
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except Exception:  # whatever is wrong, the full decoding says it in its own words
        return None
    if type(body) is not dict or len(body) != payload[0] & 0x0F:
        return None
    for key, value in body.items():  # a loop: quicker than map() and a set for 5 keys
        if type(key) is not str or type(value) not in _SCALARS:
            return None
    return body


def _plain_data_problem(value: Any, depth: int) -> str | None:
    """Why ``value`` is not plain msgpack data, or None.

    Plain means: string map keys, no extension types, containers nested at most
    ``MAX_DEPTH`` levels deep (the top-level map is level 1; scalars add no level).
    """
    if isinstance(value, (dict, list)) and depth > MAX_DEPTH:
        return f"containers nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, dict):
        # strict_map_key already refused keys other than str and bytes (msgpack bin);
        # ``in`` over ``map`` looks for bytes without a Python-level loop.
        if bytes in map(type, value):
            return "map keys must be msgpack strings"
        items = list(value.values())
    elif isinstance(value, list):
        if _SCALARS.issuperset(map(type, value)):
            return None  # a list of scalars (a range's counts): one C loop, not one turn each
        items = value
    elif value is None or isinstance(value, (bool, int, float, str, bytes)):
        return None
    else:
        return f"msgpack extension types are not allowed ({type(value).__name__})"
    for item in items:
        if type(item) in _SCALARS:
            continue  # most fields: no call needed
        problem = _plain_data_problem(item, depth + 1)
        if problem is not None:
            return problem
    return None
