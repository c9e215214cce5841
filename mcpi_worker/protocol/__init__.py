"""The mcpi wire protocol, sans-IO: bytes and clock readings in, events and bytes out.

Nothing here reads a pipe, starts a thread or sleeps. ``protocol.md`` at the top of the
repository is the normative description; this package is its reference
implementation, and the golden frames in that document are checked against it by the
test suite. The layers:

- ``messages``: limits, error codes, the message dataclasses and the table of the rule
  each field obeys (``FIELDS``, read by ``parse_message``);
- ``framing``: a 4-byte big-endian length and one msgpack map (``encode``,
  ``FrameDecoder``), and the frame-size limit;
- ``admission``: whether a worker takes a sample;
- ``worker_end``: the worker's end of a connection (``WorkerEnd``), driven by the real
  worker and by the fake workers alike;
- ``coordinator_end``: the coordinator's end (``CoordinatorEnd``), driven by the Trio
  pool and the one-shot benchmark client.

Each rule has one home, a function or table here that every party asks (the worker's
end, the coordinator's end, the pool's dispatcher, ``Chunk``, the fakes):

- what each field of each message may hold, and which fields are required:
  ``messages.FIELDS`` (applied on receipt by ``parse_message``, before sending by
  ``messages.field_problem``, or where a sender makes its fields: the pool's ``Chunk``, a
  ``checked.CheckedSampleFields``, which ``CoordinatorEnd.send_checked`` alone takes; a
  field is optional when its dataclass gives a default);
- the order in which a bad message's problems are reported, and the id an error is
  reported under: ``messages.parse_message``, ``messages.usable_id``;
- which messages each side accepts: ``COORDINATOR_MESSAGES``, ``WORKER_MESSAGES``;
- the version both sides speak: ``messages.negotiate_version``;
- the frame-size limit (``MAX_FRAME``, and a worker's ``max_frame``):
  ``framing.frame_problem``;
- what a frame may hold (one map of plain data, nested at most ``MAX_DEPTH``, no key
  twice, valid UTF-8): ``framing.FrameDecoder``;
- whether a worker takes a sample (its kernel, a range needs ``RANGE_VERSION``, streams
  not past 2**64-1, ``MAX_STREAMS``, ``max_points``, ``MAX_GROUPS``):
  ``admission.refusal``; with the frame against its ``max_frame``:
  ``admission.sending_problem``; the dispatcher's quick forms of it, held equal to it by
  the tests: ``admission.plain_verdict``, ``admission.most_streams``; what no worker takes,
  whatever its welcome (for ``Chunk``): ``admission.sample_problem``;
- what a welcome may announce beyond its fields (``jobs`` within ``max_inflight`` and
  ``MAX_JOBS``, one implementation per kernel): ``Welcome.problem``;
- what a range is, its groups and the counts it reports: ``Sample.is_range``,
  ``Sample.groups``, ``Sample.group_streams``, ``Sample.insides_problem``;
- what a request costs (the worker's reader thread, the stall budget): ``Sample.work``;
- which errors end the connection and which may be retried: ``FATAL_CODES``,
  ``RETRYABLE_CODES`` (``Error.fatal``, ``Error.retryable``);
- when each message may be sent, and what becomes of each request on a worker (queued,
  started, ``busy``, cancelled, answered at shutdown): ``WorkerEnd``; what an answer
  must be to count (the request in flight, its points, its counts) and the stall
  deadline: ``CoordinatorEnd``.
"""

import importlib
from typing import TYPE_CHECKING, Any

from mcpi_worker.constants import MAX_POINTS
from mcpi_worker.protocol.framing import NEED_DATA, FrameDecoder, NeedData, encode
from mcpi_worker.protocol.messages import (
    COORDINATOR_MESSAGES,
    FATAL_CODES,
    HEADER,
    MAX_DEPTH,
    MAX_FRAME,
    MAX_GROUPS,
    MAX_JOBS,
    MAX_LIST,
    MAX_STREAMS,
    MAX_TEXT,
    OPTIONAL_FIELDS,
    PROTOCOL_VERSIONS,
    QUOTE_LIMIT,
    RANGE_VERSION,
    REQUEST_TYPES,
    RETRYABLE_CODES,
    STREAM_COST_POINTS,
    UINT64_MAX,
    WORKER_MESSAGES,
    Cancel,
    CoordinatorMessage,
    Error,
    ErrorCode,
    FatalProtocolError,
    Hello,
    LocalProtocolError,
    Message,
    Ping,
    Pong,
    ProtocolError,
    RequestError,
    Result,
    Sample,
    Shutdown,
    Welcome,
    WorkerMessage,
    bounded_text,
    is_uint64,
    negotiate_version,
    parse_message,
    quote,
    usable_id,
)

__all__ = [
    "COORDINATOR_MESSAGES",
    "FATAL_CODES",
    "HEADER",
    "MAX_DEPTH",
    "MAX_FRAME",
    "MAX_GROUPS",
    "MAX_JOBS",
    "MAX_LIST",
    "MAX_POINTS",
    "MAX_STREAMS",
    "MAX_TEXT",
    "NEED_DATA",
    "OPTIONAL_FIELDS",
    "PROTOCOL_VERSIONS",
    "QUOTE_LIMIT",
    "RANGE_VERSION",
    "REQUEST_TYPES",
    "RETRYABLE_CODES",
    "STREAM_COST_POINTS",
    "UINT64_MAX",
    "WORKER_MESSAGES",
    "Answered",
    "Broken",
    "Cancel",
    "ConnectionEnded",
    "CoordinatorEnd",
    "CoordinatorEvent",
    "CoordinatorMessage",
    "CoordinatorState",
    "Error",
    "ErrorCode",
    "ExitCode",
    "FatalProtocolError",
    "FrameDecoder",
    "Hello",
    "LocalProtocolError",
    "Message",
    "NeedData",
    "Orphan",
    "Ping",
    "Pong",
    "ProtocolError",
    "RequestError",
    "Result",
    "Sample",
    "Shutdown",
    "StartSample",
    "StopSample",
    "TaskBudget",
    "Welcome",
    "Welcomed",
    "WorkerEnd",
    "WorkerEvent",
    "WorkerMessage",
    "WorkerOffer",
    "WorkerState",
    "bounded_text",
    "encode",
    "is_uint64",
    "negotiate_version",
    "parse_message",
    "quote",
    "usable_id",
]

if TYPE_CHECKING:
    from mcpi_worker.protocol.coordinator_end import (
        Answered,
        Broken,
        CoordinatorEnd,
        CoordinatorEvent,
        CoordinatorState,
        Orphan,
        TaskBudget,
        Welcomed,
    )
    from mcpi_worker.protocol.worker_end import (
        ConnectionEnded,
        ExitCode,
        StartSample,
        StopSample,
        WorkerEnd,
        WorkerEvent,
        WorkerOffer,
        WorkerState,
    )

_ENDS: dict[str, frozenset[str]] = {
    "coordinator_end": frozenset(
        (
            "Answered", "Broken", "CoordinatorEnd", "CoordinatorEvent", "CoordinatorState", "Orphan", "TaskBudget",
            "Welcomed",
        )
    ),
    "worker_end": frozenset(
        (
            "ConnectionEnded", "ExitCode", "StartSample", "StopSample", "WorkerEnd", "WorkerEvent", "WorkerOffer",
            "WorkerState",
        )
    ),
}  # fmt: skip
"""Each end's module and the names it gives this package."""


def __getattr__(name: str) -> Any:
    """Each end of a connection (``coordinator_end``, ``worker_end``), imported when one of its
    names is first asked for: a process is one end, never both, and the other end's import
    was part of every worker's start before its ``hello`` and of the command's before its
    own."""
    for module_name, names in _ENDS.items():
        if name in names:
            module = importlib.import_module(f"{__name__}.{module_name}")
            given = {each: getattr(module, each) for each in names}
            globals().update(given)  # found directly from now on
            return given[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
