"""The protocol's vocabulary: limits, error codes, messages, and the rules a field must obey.

Everything here is data and pure functions: no I/O, no state. ``framing`` turns bytes
into the maps that ``parse_message`` checks, and messages back into bytes; the two
connection ends (``worker_end``, ``coordinator_end``) hold the rules about *when* a
message may be sent. protocol.md §3–§4 and §8 are the normative text.
"""

from __future__ import annotations

import math
import struct
from array import array
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar, Final

from mcpi_worker.constants import MAX_POINTS

PROTOCOL_VERSIONS: Final[tuple[int, ...]] = (1, 2)
"""Protocol versions this implementation speaks, oldest first. Version 2 adds stream
ranges (``Sample.streams``, ``Sample.group``, ``Result.insides``); both versions carry
``Welcome.jobs``."""

RANGE_VERSION: Final[int] = 2
"""The first version in which a ``sample`` may cover more than one stream."""

HEADER: Final = struct.Struct(">I")
MAX_FRAME: Final[int] = 1 << 20
"""Largest frame body either side accepts (1 MiB). Checked before allocating."""

MAX_DEPTH: Final[int] = 16
"""Deepest container nesting accepted inside a message (the top-level map is depth 1)."""

UINT64_MAX: Final[int] = (1 << 64) - 1
MAX_TEXT: Final[int] = 4096
"""Longest text field, in Unicode code points (names, messages, kernel names)."""

MAX_LIST: Final[int] = 64
"""Most entries in an array field (``versions``, ``kernels``)."""

MAX_GROUPS: Final[int] = 4096
"""Most counts one range result reports (``Result.insides``): about 37 KB of frame."""

MAX_JOBS: Final[int] = 1024
"""Most samples a worker may say it computes at once (``Welcome.jobs``)."""

MAX_STREAMS: Final[int] = 1 << 20
"""Most streams one range may cover. A stream costs its set-up even with no points
(``STREAM_COST_POINTS``), so without this bound a range of 2**64-1 zero-point streams,
which ``max_points`` lets through, would never be answered."""

STREAM_COST_POINTS: Final[int] = 1 << 14
"""What setting up one stream costs, counted in points (``Sample.work``): a stream's
``SeedSequence`` and generator set-up take as long as counting thousands of points
(benchmarks/kernel_ranges.py), and a range of many tiny streams is mostly set-up. Used
for the work a request may do on the worker's reader thread and for the stall budget
of protocol.md §9: a range's budget grows with its streams as well as its points."""

QUOTE_LIMIT: Final[int] = 64
"""Most code points of a peer's value quoted in an error message. A message quoting a
1 MiB ``type`` would itself be over ``MAX_TEXT``, and its frame over ``MAX_FRAME``."""


# --------------------------------------------------------------------------- errors


class ErrorCode(StrEnum):
    """The ``code`` of an ``error`` message. See protocol.md §8."""

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
    """Base of the errors about what a peer sent. ``code`` is an ``ErrorCode``."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        message = bounded_text(message)
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

    ``request_id`` is the message's usable id (``usable_id``), so the receiver can
    answer it with an ``error`` message; ``None`` when there is none, and then the
    error is fatal after all (protocol.md §8).
    """

    def __init__(self, code: ErrorCode, message: str, request_id: int | None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


class LocalProtocolError(RuntimeError):
    """This side tried something the protocol forbids (a bug in the caller, not the peer):
    a request the ``welcome`` rules out, a message in the wrong state, an unknown id."""


def bounded_text(text: str) -> str:
    """``text`` as an error's ``message`` must be (protocol.md §8): one line, each line
    break (CR LF, CR or LF) made `` / ``, cut to ``MAX_TEXT`` code points. Error messages
    are built from exceptions (a kernel's, numba's run over several lines) and quoted
    values; without this a peer that checks §4 would take a per-request error for a
    broken worker."""
    if "\n" in text or "\r" in text:
        text = " / ".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _one_line(value: Any) -> bool:
    return type(value) is str and len(value) <= MAX_TEXT and "\n" not in value and "\r" not in value


def quote(value: Any) -> str:
    """``repr(value)``, cut to ``QUOTE_LIMIT`` code points: how error messages quote a
    peer's values, so that no value makes the message too long to send."""
    text = repr(value)
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 1] + "…"


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
    expected_points: int | None = None
    """Optional, either version: the points in all the coordinator expects to ask of this
    worker (a hint, protocol.md §5.1: it changes no count and limits nothing; None: not
    said). A worker may load a faster implementation at once for a long run."""


@dataclass(frozen=True, slots=True)
class Sample:
    """Count points of stream ``stream`` of ``seed`` that fall inside the quarter circle.

    From version 2, a range: ``streams`` consecutive streams from ``stream``, ``points``
    each, reported as one count per ``group`` streams (``None``: one group).
    """

    TYPE: ClassVar[str] = "sample"
    id: int
    seed: int
    stream: int
    points: int
    kernel: str
    streams: int = 1
    group: int | None = None

    @property
    def total_points(self) -> int:
        return self.streams * self.points

    @property
    def is_range(self) -> bool:
        """A range (protocol.md §6.1): ``streams`` other than 1, or a ``group`` given
        (whatever its value). Its result must carry ``insides``; a plain sample's must not."""
        return self.streams != 1 or self.group is not None

    @property
    def group_size(self) -> int:
        """Streams per reported count (the last group may be shorter)."""
        return self.streams if self.group is None else self.group

    @property
    def groups(self) -> int:
        """How many counts the result reports (``Result.insides``)."""
        return -(-self.streams // self.group_size)

    def group_streams(self, index: int) -> int:
        """How many streams group ``index`` (from 0) covers: ``group_size``, but the last
        group covers what is left. The one statement of that rule: the counts a range
        reports are checked against it (``insides_problem``) and made up by it."""
        return min(self.group_size, self.streams - index * self.group_size)

    @property
    def work(self) -> int:
        """What computing it costs, counted in points: its points and each stream's set-up
        (``STREAM_COST_POINTS``). Zero-point streams are not free (``sample_work``)."""
        return sample_work(self.points, self.streams)

    def insides_problem(self, insides: tuple[int, ...] | list[int] | None) -> str | None:
        """What is wrong with ``insides`` as the counts per group answering this sample
        (protocol.md §6.1: present exactly for a range, one per group, none above its
        group's points), or None. Their sum is ``inside``: the caller checks that."""
        if not self.is_range:
            return None if insides is None else "counts per group for the plain sample"
        groups = self.groups
        if insides is None or len(insides) != groups:
            return f"{'none' if insides is None else len(insides)} counts for the {groups} groups"
        # max() rather than a loop: a range may report 4096 counts.
        full, last = self.group_streams(0) * self.points, self.group_streams(groups - 1) * self.points
        if (groups > 1 and max(insides[:-1]) > full) or insides[-1] > last:
            return "more inside than a group has points"
        return None


def sample_work(points: int, streams: int = 1) -> int:
    """``Sample.work`` of a sample of ``streams`` streams of ``points`` points each, for a
    sender that has not built the ``Sample``: the one statement of that rule."""
    return streams * (points + STREAM_COST_POINTS)


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
    jobs: int = 1
    """How many samples it computes at once (each request still gets one answer)."""
    implementations: tuple[str, ...] = ()
    """Which implementation runs each of ``kernels`` now, in the same order (free-form
    names, e.g. ``numba-fused``; empty: not said)."""

    @property
    def problem(self) -> str | None:
        """What makes this welcome one a coordinator must treat as broken, beyond its
        fields' own types (protocol.md §4.2, §5), or None: ``jobs`` above its
        ``max_inflight`` (it could never have that many samples to compute) or above
        ``MAX_JOBS``, or ``implementations`` not naming one per kernel."""
        if self.jobs > self.max_inflight:
            return f"announced {self.jobs} jobs, more than its max_inflight {self.max_inflight}"
        if self.jobs > MAX_JOBS:
            return f"announced {self.jobs} jobs, more than the limit of {MAX_JOBS}"
        if self.implementations and len(self.implementations) != len(self.kernels):
            return f"named {len(self.implementations)} implementations for {len(self.kernels)} kernels"
        return None


@dataclass(frozen=True, slots=True)
class Result:
    """The final response to a ``Sample``: ``inside`` of ``points`` landed in the circle."""

    TYPE: ClassVar[str] = "result"
    id: int
    inside: int
    points: int
    elapsed_s: float
    insides: tuple[int, ...] | None = None
    """For a range (version 2): the count of each group of streams, in order."""
    implementation: str = ""
    """Which implementation of the kernel counted it (free-form; empty: not said)."""


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


CoordinatorMessage = Hello | Sample | Ping | Cancel | Shutdown
WorkerMessage = Welcome | Result | Pong | Error
Message = CoordinatorMessage | WorkerMessage

COORDINATOR_MESSAGES: Final[dict[str, type[Message]]] = {
    cls.TYPE: cls for cls in (Hello, Sample, Ping, Cancel, Shutdown)
}
"""What a worker accepts: the messages a coordinator sends."""

WORKER_MESSAGES: Final[dict[str, type[Message]]] = {
    cls.TYPE: cls for cls in (Welcome, Result, Pong, Error)
}
"""What a coordinator accepts: the messages a worker sends."""

REQUEST_TYPES: Final[frozenset[str]] = frozenset({Sample.TYPE, Ping.TYPE})
"""Messages answered by a response carrying their id."""

# ------------------------------------------------------------------------ validation


def is_uint64(value: Any) -> bool:
    # bool is an int subclass in Python but a distinct msgpack type: reject it.
    return type(value) is int and 0 <= value <= UINT64_MAX


@dataclass(frozen=True, slots=True)
class FieldRule:
    """What one wire field's value must be (protocol.md §4): ``valid(value)`` says whether
    it is; ``expects`` ends the error message about a value that is not ("must be ...");
    ``convert``, if any, turns a valid value into the message's (an array into a tuple,
    an integer number of seconds into a float).

    ``valid`` takes exact types only (``type(v) is int``, never ``isinstance``): msgpack
    decodes to exact types, and ``bool`` is an ``int`` in Python but not on the wire.

    ``sized``, for a rule made by ``sized_rule``: the type (``int`` or ``str``) and the
    bounds that ``valid`` checks, so that the loops on every message's path
    (``parse_message``, ``field_problem``) check the rule without a call."""

    valid: Callable[[Any], bool]
    expects: str
    convert: Callable[[Any], Any] | None = None
    sized: tuple[type, int, int] | None = None


def sized_rule(kind: type[int] | type[str], low: int, high: int, expects: str) -> FieldRule:
    """The rule "exactly a ``kind`` from ``low`` to ``high``": an integer's value, or a
    string's length in code points, within the bounds. Its ``valid`` and its ``sized``
    both come from these three values, so the two forms of the check cannot disagree."""
    if kind is int:

        def valid(value: Any) -> bool:
            return type(value) is int and low <= value <= high

    else:

        def valid(value: Any) -> bool:
            return type(value) is str and low <= len(value) <= high

    return FieldRule(valid, expects, sized=(kind, low, high))


def _valid_versions(value: Any) -> bool:
    return (
        type(value) is list
        and 0 < len(value) <= MAX_LIST
        and all(type(v) is int and 0 < v <= UINT64_MAX for v in value)
    )


def _valid_counts(value: Any) -> bool:
    """``is_uint64`` of each count, in C loops: a range may answer with 4096 of them, and
    a Python call each was most of what checking a range's answer cost per stream. Exact
    ints only (``map(type, ...)``: not bool), each within 0 and 2**64-1 (an unsigned
    64-bit array refuses any other with ``OverflowError``)."""
    if type(value) is not list or len(value) > MAX_GROUPS or not _INT_ONLY.issuperset(map(type, value)):
        return False
    try:
        array("Q", value)
    except OverflowError:
        return False
    return True


_INT_ONLY: Final = frozenset({int})


def _valid_names(value: Any) -> bool:
    return (
        type(value) is list
        and len(value) <= MAX_LIST
        and all(type(v) is str and len(v) <= MAX_TEXT for v in value)
    )


def _valid_seconds(value: Any) -> bool:
    # Informational, but reported to users (as JSON, which has no NaN): a peer that
    # measures time as NaN, infinite or negative is not measuring it.
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


UINT64: Final = sized_rule(int, 0, UINT64_MAX, "must be an integer from 0 to 2**64-1")
POINTS: Final = sized_rule(int, 0, MAX_POINTS, f"must be an integer from 0 to {MAX_POINTS}")
POSITIVE: Final = sized_rule(int, 1, UINT64_MAX, "must be a positive integer")
POINTS_LIMIT: Final = sized_rule(int, 1, MAX_POINTS, f"must be an integer from 1 to {MAX_POINTS}")
OPTIONAL_ID: Final = FieldRule(
    lambda v: v is None or is_uint64(v), "must be nil or an integer from 0 to 2**64-1"
)
TEXT: Final = sized_rule(str, 0, MAX_TEXT, f"must be a string of at most {MAX_TEXT} characters")
SECONDS: Final = FieldRule(_valid_seconds, "must be a finite, non-negative number", float)
LINE: Final = FieldRule(_one_line, f"must be one line (no CR or LF) of at most {MAX_TEXT} characters")
VERSIONS: Final = FieldRule(
    _valid_versions, f"must be a non-empty array of at most {MAX_LIST} positive integers", tuple
)
NAMES: Final = FieldRule(_valid_names, f"must be an array of at most {MAX_LIST} strings", tuple)
COUNTS: Final = FieldRule(
    _valid_counts, f"must be an array of at most {MAX_GROUPS} integers from 0 to 2**64-1", tuple
)

FIELDS: Final[dict[type[Message], dict[str, FieldRule]]] = {
    Hello: {"versions": VERSIONS, "client": TEXT, "expected_points": UINT64},
    Sample: {
        "id": UINT64, "seed": UINT64, "stream": UINT64, "points": POINTS, "kernel": TEXT,
        "streams": POSITIVE, "group": POSITIVE,
    },
    Ping: {"id": UINT64},
    Cancel: {"id": UINT64},
    Shutdown: {},
    Welcome: {
        "version": POSITIVE, "worker": TEXT, "pid": UINT64, "host": TEXT, "kernels": NAMES,
        "max_inflight": POSITIVE, "max_frame": POSITIVE, "max_points": POINTS_LIMIT, "jobs": POSITIVE,
        "implementations": NAMES,
    },
    Result: {
        "id": UINT64, "inside": UINT64, "points": POINTS, "elapsed_s": SECONDS, "insides": COUNTS,
        "implementation": TEXT,
    },
    Pong: {"id": UINT64},
    Error: {"id": OPTIONAL_ID, "code": TEXT, "message": LINE},
}  # fmt: skip
"""The one statement of every field rule: for each message, its wire fields in wire order
(after ``type``), each with the rule its value obeys. A field is required unless its
dataclass gives it a default, which is what its absence means (``OPTIONAL_FIELDS``).
``parse_message`` accepts and refuses by this table alone, and its error messages come
from it, so the two cannot disagree; the encoder sends the fields in this order."""


def _field_names(cls: type) -> tuple[str, ...]:
    names = tuple(FIELDS[cls])
    declared = tuple(field.name for field in fields(cls))
    if names != declared:  # a field added to a message but not to the table, or reordered
        raise TypeError(f"FIELDS[{cls.__name__}] names {names}, its dataclass {declared}")
    return names


FIELD_NAMES: Final[dict[type, tuple[str, ...]]] = {cls: _field_names(cls) for cls in FIELDS}
"""Each message class's wire fields, in wire order, worked out once: calling
``dataclasses.fields`` cost more than the rest of encoding a small message."""

OPTIONAL_FIELDS: Final[dict[type, dict[str, Any]]] = {
    cls: {field.name: field.default for field in fields(cls) if field.default is not MISSING}
    for cls in FIELD_NAMES
}
"""Fields a later version added, with the value their absence means. A receiver takes
a missing one as that value; our encoder leaves one out when it has that value, so the
frames of version 1 are byte for byte what they always were."""


def usable_id(body: dict[str, Any], accept: dict[str, type[Message]]) -> int | None:
    """The id an error about ``body`` can be reported under, or None.

    Usable means: a uint64 ``id`` on a message that is not known here to go
    unanswered. A ``sample`` or ``ping`` has one; so does a message of a type this side
    does not accept (a newer peer's request gets ``unknown_type``, not a dead
    connection). A known message that is never answered by id (``hello``, ``cancel``,
    ``shutdown``; every worker message, for a coordinator) has none: an ``id`` key on a
    ``hello`` is just an unknown key, and a problem with such a message is fatal.
    """
    kind = body.get("type")
    if isinstance(kind, str) and kind in accept and kind not in REQUEST_TYPES:
        return None
    request_id = body.get("id")
    return request_id if is_uint64(request_id) else None


_MISSING: Final = object()
_REQUIRED: Final = object()

_FieldCheck = tuple[str, Callable[[Any], bool], Callable[[Any], Any] | None, Any, type | None, int, int]

_FIELD_CHECKS: Final[dict[type, tuple[_FieldCheck, ...]]] = {
    cls: tuple(
        (name, rule.valid, rule.convert, OPTIONAL_FIELDS[cls].get(name, _REQUIRED), *(rule.sized or (None, 0, 0)))
        for name, rule in rules.items()
    )
    for cls, rules in FIELDS.items()
}
"""``FIELDS`` unpacked for the loops of ``parse_message`` and ``field_problem``: (name,
valid, convert, the value its absence means or ``_REQUIRED``, and the rule's ``sized``
type and bounds, or None, 0, 0). A sized rule is checked in the loop itself: these two
loops run for every message sent and received, and a call per field was most of them."""


def _unrolled_parser(cls: type[Message]) -> Callable[[dict[str, Any]], Message | None]:
    """``parse_message``'s loop over ``cls``'s fields written out for ``cls`` alone, from
    ``_FIELD_CHECKS`` (so from ``FIELDS``, the rules' one statement): a function of a
    decoded map that returns the message when every field is valid, and None when one is
    not (``parse_message`` then runs its loop, which says which and why). Each message
    received takes it; the loop's turns, its tuple of seven and its list of values cost
    more than the checks themselves. Made once per class at import, as ``dataclasses``
    makes each class's ``__init__``: its source holds only field names (``repr``), integer
    bounds and the names of the rule's own functions. Its ``__doc__`` is that source;
    ``Hello``'s, for one (tests/protocol/test_core_differential.py holds the two equal)::

        def parse(body):
            v0 = body.get('versions', _MISSING)
            if not (v0 is not _MISSING and valid0(v0)):
                return None
            v0 = convert0(v0)
            v1 = body.get('client', _MISSING)
            if not (type(v1) is str and 0 <= len(v1) <= 4096):
                return None
            v2 = body.get('expected_points', _MISSING)
            if v2 is _MISSING:
                v2 = absent2
            elif not (type(v2) is int and 0 <= v2 <= 18446744073709551615):
                return None
            return cls(v0, v1, v2)

    (``valid0``, ``convert0``: ``VERSIONS``' own; ``absent2``: the value a missing
    ``expected_points`` means, None.)"""
    scope: dict[str, Any] = {"cls": cls, "_MISSING": _MISSING}
    lines = ["def parse(body):"]
    values = []
    for index, (name, valid, convert, absent, sized, low, high) in enumerate(_FIELD_CHECKS[cls]):
        value = f"v{index}"
        values.append(value)
        lines.append(f"    {value} = body.get({name!r}, _MISSING)")
        if sized is int:
            fits = f"type({value}) is int and {int(low)} <= {value} <= {int(high)}"
        elif sized is str:
            fits = f"type({value}) is str and {int(low)} <= len({value}) <= {int(high)}"
        else:
            scope[f"valid{index}"] = valid
            fits = f"{value} is not _MISSING and valid{index}({value})"
        converted = ""
        if convert is not None:
            scope[f"convert{index}"] = convert
            converted = f"{value} = convert{index}({value})"
        if absent is _REQUIRED:
            lines.append(f"    if not ({fits}):")
            lines.append("        return None")
            if converted:
                lines.append(f"    {converted}")
        else:
            scope[f"absent{index}"] = absent
            lines.append(f"    if {value} is _MISSING:")
            lines.append(f"        {value} = absent{index}")
            lines.append(f"    elif not ({fits}):")
            lines.append("        return None")
            if converted:
                lines.append("    else:")
                lines.append(f"        {converted}")
    lines.append(f"    return cls({', '.join(values)})")
    source = "\n".join(lines)
    exec(source, scope)  # its source: made above from the field table alone
    parse: Callable[[dict[str, Any]], Message | None] = scope["parse"]
    parse.__doc__ = source  # for a reader: help(), a traceback that says only <string>
    return parse


_PARSERS: Final[dict[type, Callable[[dict[str, Any]], Message | None]]] = {
    cls: _unrolled_parser(cls) for cls in FIELDS
}


_OWN_KEYS: Final[dict[type, frozenset[str]]] = {cls: frozenset(("type", *names)) for cls, names in FIELD_NAMES.items()}
"""Each message's own keys on the wire: ``type`` and its fields."""


def parse_own_fields(body: dict[str, Any], accept: dict[str, type[Message]]) -> Message | None:
    """``parse_message(body, accept)`` when ``body``'s keys are all its message's own
    (``type`` and its fields: ``FIELDS``) and every field is valid; None for any other
    map, whatever is wrong with it (``parse_message`` then says).

    For a decoder that has not checked that the map holds plain data only (protocol.md
    §3: string keys, no extension types, bounded nesting): a map whose keys are all the
    message's own has no value that its field's rule has not checked, and every rule
    takes plain data only (scalars, or an array of them), so a message accepted here
    holds nothing else. Never raises."""
    kind = body.get("type")
    cls = accept.get(kind) if type(kind) is str else None
    if cls is None or not body.keys() <= _OWN_KEYS[cls]:
        return None
    return _PARSERS[cls](body)


def parse_message(body: dict[str, Any], accept: dict[str, type[Message]]) -> Message:
    """Validate one decoded top-level map and build its message. Raises ``RequestError``
    (never anything else, whatever ``body`` holds).

    Checks in this order, and reports the first that fails (protocol.md §8 "Precedence"):
    ``type`` present and a str; ``type`` accepted here; each field in wire order, present
    (unless optional) and valid by its rule in ``FIELDS``. Unknown keys are ignored.
    A valid message is built by its class's unrolled form of the field loop
    (``_unrolled_parser``); the loop itself (``_parse_fields``) runs for the others, and
    says what is wrong.
    """
    kind = body.get("type")
    cls = accept.get(kind) if type(kind) is str else None
    if cls is not None and (message := _PARSERS[cls](body)) is not None:
        return message
    if cls is None:
        reply_id = usable_id(body, accept)
        if not isinstance(kind, str):
            raise RequestError(ErrorCode.INVALID_REQUEST, "missing or non-string 'type'", reply_id)
        raise RequestError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {quote(kind)}", reply_id)
    return _parse_fields(cls, body, accept)


def _parse_fields(cls: type[Message], body: dict[str, Any], accept: dict[str, type[Message]]) -> Message:
    """``body``'s fields checked in wire order by ``cls``'s rules and its message built;
    ``RequestError`` for the first field that is missing (and required) or invalid."""
    kind = cls.TYPE
    values: list[Any] = []
    for name, valid, convert, absent, sized, low, high in _FIELD_CHECKS[cls]:
        value = body.get(name, _MISSING)
        if sized is int:
            if type(value) is int and low <= value <= high:
                values.append(value)
                continue
        elif sized is str:
            if type(value) is str and low <= len(value) <= high:
                values.append(value)
                continue
        elif value is not _MISSING and valid(value):
            values.append(value if convert is None else convert(value))
            continue
        if value is _MISSING:
            if absent is _REQUIRED:
                why = f"{kind}: missing field {name!r}"
                raise RequestError(ErrorCode.INVALID_REQUEST, why, usable_id(body, accept))
            values.append(absent)
            continue
        why = f"{kind}: {name!r} {FIELDS[cls][name].expects}"
        raise RequestError(ErrorCode.INVALID_REQUEST, why, usable_id(body, accept))
    return cls(*values)


def field_problem(message: Message) -> str | None:
    """What breaks the field table (``FIELDS``) in a message this side built, or None: the
    check ``parse_message`` makes on the receiving end, for a sender that must not send
    what its peer would refuse. A field left at the value its absence means is not sent,
    so it is not checked."""
    cls = type(message)
    for name, valid, _, absent, sized, low, high in _FIELD_CHECKS[cls]:
        value = getattr(message, name)
        if sized is int:
            if type(value) is int and low <= value <= high:
                continue
        elif sized is str:
            if type(value) is str and low <= len(value) <= high:
                continue
        elif valid(list(value) if type(value) is tuple else value):
            continue
        if absent is not _REQUIRED and type(value) is type(absent) and value == absent:
            continue  # left out of the frame: its absence means this value
        return f"{message.TYPE}: {name!r} {FIELDS[cls][name].expects}"
    return None


def negotiate_version(offered: tuple[int, ...], spoken: tuple[int, ...] = PROTOCOL_VERSIONS) -> int | None:
    """The highest version both sides speak, or None when they share none."""
    common = set(offered) & set(spoken)
    return max(common) if common else None
