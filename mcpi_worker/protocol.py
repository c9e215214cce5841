"""The mcpi wire protocol, sans-IO: bytes in, messages out; messages in, bytes out.

Nothing here reads a pipe, starts a thread or sleeps. The worker drives it
synchronously from its stdin thread; the coordinator drives it from Trio tasks.
``protocol.md`` at the top of the repository is the normative description; this
module is its reference implementation, and the golden frames in that document are
checked against it by the test suite.

A frame is a 4-byte unsigned big-endian length followed by exactly that many bytes
holding one msgpack map with string keys. See ``FrameDecoder`` for the receiving
side and ``encode`` for the sending side.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar, Final, Union

import msgpack

PROTOCOL_VERSIONS: Final[tuple[int, ...]] = (1,)
"""Protocol versions this implementation speaks, oldest first."""

HEADER: Final = struct.Struct(">I")
MAX_FRAME: Final[int] = 1 << 20
"""Largest frame body either side accepts (1 MiB). Checked before allocating."""

MAX_DEPTH: Final[int] = 16
"""Deepest container nesting accepted inside a message (the top-level map is depth 1)."""

UINT64_MAX: Final[int] = (1 << 64) - 1
MAX_POINTS: Final[int] = 1 << 40
"""Largest ``points`` one sample request may ask for (about 1.1e12)."""

MAX_TEXT: Final[int] = 4096
"""Longest string field (client/worker names, messages, kernel names) we accept."""

MAX_LIST: Final[int] = 64
"""Most entries in an array field (``versions``, ``kernels``)."""


# --------------------------------------------------------------------------- errors


class ErrorCode(StrEnum):
    """The ``code`` of an ``error`` message. See protocol.md, "Errors"."""

    # Per-request: the connection stays up.
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_KERNEL = "unknown_kernel"
    HANDSHAKE_REQUIRED = "handshake_required"
    DUPLICATE_ID = "duplicate_id"
    BUSY = "busy"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    # Fatal: the sender closes the connection after sending it.
    MALFORMED_FRAME = "malformed_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    TRUNCATED_FRAME = "truncated_frame"
    UNSUPPORTED_VERSION = "unsupported_version"


FATAL_CODES: Final[frozenset[str]] = frozenset(
    {
        ErrorCode.MALFORMED_FRAME,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.TRUNCATED_FRAME,
        ErrorCode.UNSUPPORTED_VERSION,
    }
)
"""Codes after which the connection is over. Everything else is per-request."""

RETRYABLE_CODES: Final[frozenset[str]] = frozenset(
    {ErrorCode.BUSY, ErrorCode.INTERNAL, ErrorCode.CANCELLED}
)
"""Per-request codes for which sending the same request again may succeed."""


class ProtocolError(Exception):
    """Base of every error this module raises. ``code`` is an ``ErrorCode``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FatalProtocolError(ProtocolError):
    """The byte stream cannot be trusted any more; the connection must close.

    After raising it, a ``FrameDecoder`` stays broken: every later call raises the
    same error again, like h11's ERROR state.
    """


class RequestError(ProtocolError):
    """One well-framed message was invalid; the connection goes on.

    ``request_id`` is the message's id when it had a usable one, so the receiver
    can answer it with an ``error`` message; ``None`` otherwise.
    """

    def __init__(self, code: ErrorCode, message: str, request_id: int | None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


# ------------------------------------------------------------------------ messages
#
# Field order below is wire order (after "type"). Receivers must not depend on it;
# our encoder keeps it fixed so that golden frames are byte-exact.


@dataclass(frozen=True, slots=True)
class Hello:
    """Coordinator -> worker, first message: the versions the coordinator speaks."""

    TYPE: ClassVar[str] = "hello"
    versions: tuple[int, ...]
    client: str


@dataclass(frozen=True, slots=True)
class Sample:
    """Count points of stream ``stream`` of ``seed`` that fall inside the quarter circle."""

    TYPE: ClassVar[str] = "sample"
    id: int
    seed: int
    stream: int
    points: int
    kernel: str


@dataclass(frozen=True, slots=True)
class Ping:
    """The cheapest request; answered with ``Pong`` even while a kernel runs."""

    TYPE: ClassVar[str] = "ping"
    id: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """Notification: stop request ``id`` if it has not finished. Idempotent, no reply."""

    TYPE: ClassVar[str] = "cancel"
    id: int


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Notification: cancel everything outstanding, answer it, then exit 0."""

    TYPE: ClassVar[str] = "shutdown"


@dataclass(frozen=True, slots=True)
class Welcome:
    """Worker -> coordinator, first message: the chosen version and what the worker offers."""

    TYPE: ClassVar[str] = "welcome"
    version: int
    worker: str
    pid: int
    host: str
    kernels: tuple[str, ...]
    max_inflight: int
    max_frame: int
    max_points: int


@dataclass(frozen=True, slots=True)
class Result:
    """The final response to a ``Sample``: ``inside`` of ``points`` landed in the circle."""

    TYPE: ClassVar[str] = "result"
    id: int
    inside: int
    points: int
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Pong:
    TYPE: ClassVar[str] = "pong"
    id: int


@dataclass(frozen=True, slots=True)
class Error:
    """A failed request (``id`` set) or a fatal connection error (``id`` is None)."""

    TYPE: ClassVar[str] = "error"
    id: int | None
    code: str
    message: str

    @property
    def fatal(self) -> bool:
        return self.id is None or self.code in FATAL_CODES

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES


CoordinatorMessage = Union[Hello, Sample, Ping, Cancel, Shutdown]
WorkerMessage = Union[Welcome, Result, Pong, Error]
Message = Union[CoordinatorMessage, WorkerMessage]

COORDINATOR_MESSAGES: Final[dict[str, type]] = {
    cls.TYPE: cls for cls in (Hello, Sample, Ping, Cancel, Shutdown)
}
"""What a worker accepts: the messages a coordinator sends."""

WORKER_MESSAGES: Final[dict[str, type]] = {
    cls.TYPE: cls for cls in (Welcome, Result, Pong, Error)
}
"""What a coordinator accepts: the messages a worker sends."""


# ------------------------------------------------------------------------ encoding


_FIELD_NAMES: Final[dict[type, tuple[str, ...]]] = {
    cls: tuple(field.name for field in fields(cls))
    for cls in (*COORDINATOR_MESSAGES.values(), *WORKER_MESSAGES.values())
}
"""Each message class's wire fields, in wire order, worked out once: calling
``dataclasses.fields`` cost more than the rest of encoding a small message."""


def encode(message: Message) -> bytes:
    """One complete frame (length prefix included) carrying ``message``."""
    body: dict[str, Any] = {"type": message.TYPE}
    for name in _FIELD_NAMES[type(message)]:
        value = getattr(message, name)
        body[name] = list(value) if isinstance(value, tuple) else value
    payload = msgpack.packb(body, use_bin_type=True)
    if len(payload) > MAX_FRAME:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"refusing to send a {len(payload)}-byte frame (limit {MAX_FRAME})",
        )
    return HEADER.pack(len(payload)) + payload


# ------------------------------------------------------------------------ decoding


class _NeedData:
    """Returned by ``FrameDecoder.next_message`` when a whole frame has not arrived yet."""

    _instance: ClassVar[_NeedData | None] = None

    def __new__(cls) -> _NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class FrameDecoder:
    """Turns a byte stream into validated messages, one frame at a time.

    ``accept`` is the table of message types this side may receive
    (``COORDINATOR_MESSAGES`` in a worker, ``WORKER_MESSAGES`` in a coordinator).

    - ``feed(data)`` appends bytes; it never parses or raises.
    - ``next_message()`` returns a message, or ``NEED_DATA``; raises ``RequestError``
      for a well-framed but invalid message (the frame is consumed, decoding goes on)
      and ``FatalProtocolError`` when the stream itself is broken.
    - ``feed_eof()`` tells it the stream ended; it raises ``FatalProtocolError`` if
      that happened inside a frame. ``at_frame_boundary`` says whether it would.
    """

    def __init__(self, accept: dict[str, type], max_frame: int = MAX_FRAME) -> None:
        self._accept = accept
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._error: FatalProtocolError | None = None
        self._eof = False

    @property
    def at_frame_boundary(self) -> bool:
        return not self._buffer

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        self._buffer += data

    def feed_eof(self) -> None:
        self._eof = True
        self._raise_if_broken()
        if self._buffer and self._complete_frame_length() is None:
            self._fail(
                ErrorCode.TRUNCATED_FRAME,
                f"stream ended inside a frame ({len(self._buffer)} bytes buffered)",
            )

    def next_message(self) -> Message | _NeedData:
        self._raise_if_broken()
        length = self._complete_frame_length()
        if length is None:
            return NEED_DATA
        payload = bytes(self._buffer[HEADER.size : HEADER.size + length])
        del self._buffer[: HEADER.size + length]
        return self._parse(payload)

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
        if length > self._max_frame:
            self._fail(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame of {length} bytes exceeds the {self._max_frame}-byte limit",
            )
        if len(self._buffer) < HEADER.size + length:
            return None
        return length

    def _parse(self, payload: bytes) -> Message:
        try:
            body = msgpack.unpackb(
                payload,
                raw=False,
                strict_map_key=True,
                use_list=True,
            )
        except UnicodeDecodeError:
            self._fail(ErrorCode.MALFORMED_FRAME, "string is not valid UTF-8")
        except (ValueError, msgpack.UnpackException) as exc:
            # ExtraData, StackError, FormatError, truncated body, non-str keys: all
            # mean the sender is not speaking this protocol.
            self._fail(ErrorCode.MALFORMED_FRAME, f"frame is not one msgpack object: {exc}")
        if not isinstance(body, dict):
            self._fail(
                ErrorCode.MALFORMED_FRAME,
                f"frame holds a msgpack {type(body).__name__}, not a map",
            )
        problem = _plain_data_problem(body, depth=1)
        if problem is not None:
            self._fail(ErrorCode.MALFORMED_FRAME, problem)
        return parse_message(body, self._accept)

    def _fail(self, code: ErrorCode, message: str) -> Any:
        self._error = FatalProtocolError(code, message)
        self._buffer.clear()
        raise self._error

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise FatalProtocolError(self._error.code, self._error.message)


_SCALARS: Final = frozenset({type(None), bool, int, float, str, bytes})
"""What msgpack decodes its scalars to (exact types: subclasses are not plain)."""


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


def parse_message(body: dict[str, Any], accept: dict[str, type]) -> Message:
    """Validate one decoded map and build its message. Raises ``RequestError``."""
    request_id = body.get("id")
    reply_id = request_id if _is_uint64(request_id) else None
    kind = body.get("type")
    if not isinstance(kind, str):
        raise RequestError(ErrorCode.INVALID_REQUEST, "missing or non-string 'type'", reply_id)
    cls = accept.get(kind)
    if cls is None:
        raise RequestError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}", reply_id)
    values: dict[str, Any] = {}
    for name in _FIELD_NAMES[cls]:
        if name not in body:
            raise RequestError(
                ErrorCode.INVALID_REQUEST, f"{kind}: missing field {name!r}", reply_id
            )
        values[name] = _check_field(kind, name, body[name], reply_id)
    return cls(**values)  # type: ignore[no-any-return]


def _is_uint64(value: Any) -> bool:
    # bool is an int subclass in Python but a distinct msgpack type: reject it.
    return type(value) is int and 0 <= value <= UINT64_MAX


def _check_field(kind: str, name: str, value: Any, reply_id: int | None) -> Any:
    def bad(why: str) -> RequestError:
        return RequestError(ErrorCode.INVALID_REQUEST, f"{kind}: {name!r} {why}", reply_id)

    rule = _ERROR_ID_RULE if (kind, name) == (Error.TYPE, "id") else _FIELD_RULES[name]
    if rule == "uint64":
        if not _is_uint64(value):
            raise bad("must be an integer from 0 to 2**64-1")
    elif rule == "points":
        if not _is_uint64(value) or value > MAX_POINTS:
            raise bad(f"must be an integer from 0 to {MAX_POINTS}")
    elif rule == "positive":
        if not _is_uint64(value) or value == 0:
            raise bad("must be a positive integer")
    elif rule == "optional_id":
        if value is not None and not _is_uint64(value):
            raise bad("must be nil or an integer from 0 to 2**64-1")
    elif rule == "text":
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise bad(f"must be a string of at most {MAX_TEXT} characters")
    elif rule == "number":
        if type(value) not in (int, float):
            raise bad("must be a number")
        value = float(value)
    elif rule == "versions":
        if (
            not isinstance(value, list)
            or not value
            or len(value) > MAX_LIST
            or not all(_is_uint64(v) and v > 0 for v in value)
        ):
            raise bad("must be a non-empty array of positive version integers")
        value = tuple(value)
    elif rule == "names":
        if not isinstance(value, list) or len(value) > MAX_LIST or not all(
            isinstance(v, str) and len(v) <= MAX_TEXT for v in value
        ):
            raise bad("must be an array of strings")
        value = tuple(value)
    return value


_FIELD_RULES: Final[dict[str, str]] = {
    "id": "uint64",
    "seed": "uint64",
    "stream": "uint64",
    "points": "points",
    "inside": "uint64",
    "pid": "uint64",
    "version": "positive",
    "max_inflight": "positive",
    "max_frame": "positive",
    "max_points": "positive",
    "kernel": "text",
    "client": "text",
    "worker": "text",
    "host": "text",
    "code": "text",
    "message": "text",
    "elapsed_s": "number",
    "versions": "versions",
    "kernels": "names",
}
# Error.id is the one field that may be nil; it overrides the generic "id" rule.
_ERROR_ID_RULE: Final = "optional_id"


def negotiate_version(offered: tuple[int, ...]) -> int | None:
    """The highest version both sides speak, or None when they share none."""
    common = set(offered) & set(PROTOCOL_VERSIONS)
    return max(common) if common else None
