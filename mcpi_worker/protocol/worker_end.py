"""The worker's end of a connection, sans-IO: the rules of protocol.md §5–§9 for a worker.

``WorkerEnd`` is a synchronous state machine. Its driver feeds it what arrived on the
request stream (``receive_data``, ``receive_eof``) and what became of the samples it was
told to start (``sample_finished``, ``sample_failed``); each call returns the events the
driver must act on, in order, and leaves the bytes to write in ``data_to_send()``. It
never reads, writes, sleeps or starts a thread. The real worker (``mcpi_worker.server``,
threads over file descriptors) and the fake workers (``mcpi_coordinator.testing``, which
misbehave on top of it) both drive this one copy of the rules.

What it decides:

- the connection's state (``WorkerState``): waiting for ``hello``, serving, closing
  (``shutdown`` or end of input: queued requests answered ``cancelled``, running ones
  told to stop and still answered), closed, or broken by a fatal error;
- every request's fate, each input checked fully before anything changes: answered at
  once (``pong``, a per-request ``error``), queued, or started (``StartSample``: at most
  ``jobs`` at once, in arrival order) — and exactly one final response for each;
- what ``cancel`` does: a queued request is answered ``cancelled`` at once, a running
  one gets ``StopSample`` and is answered by whatever the driver reports.

What it leaves to the driver: running kernels, and when to write (the driver may hold
a burst's responses and write them together).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum, IntEnum
from typing import Final

from mcpi_worker.constants import MAX_POINTS
from mcpi_worker.protocol.admission import Unfit, plain_verdict, refusal
from mcpi_worker.protocol.framing import FrameDecoder, encode
from mcpi_worker.protocol.messages import (
    COORDINATOR_MESSAGES,
    MAX_FRAME,
    PROTOCOL_VERSIONS,
    Cancel,
    Error,
    ErrorCode,
    FatalProtocolError,
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
    bounded_text,
    field_problem,
    negotiate_version,
)


class ExitCode(IntEnum):
    """Process exit codes of a worker (protocol.md §10.3)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    PROTOCOL = 3


class WorkerState(Enum):
    AWAIT_HELLO = "await_hello"
    SERVING = "serving"
    CLOSING = "closing"
    """``shutdown`` or end of input seen: nothing more is read; the running samples
    still get their one final response, then the connection is ``CLOSED``."""
    CLOSED = "closed"
    """Orderly end (exit 0): everything answered, or nobody left to answer."""
    ERROR = "error"
    """A fatal error: one ``error`` with a nil id was the last thing written."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class StartSample:
    """Run this sample now, and report its end with ``sample_finished`` or ``sample_failed``."""

    request: Sample


@dataclass(frozen=True, slots=True)
class StopSample:
    """The running sample ``request_id`` should stop (cancelled, or the connection is
    ending). Its end must still be reported: a result, if it finished first."""

    request_id: int


@dataclass(frozen=True, slots=True)
class ConnectionEnded:
    """The connection is over: exit with ``exit_code``; ``reason`` is one line for the log.
    Always the last event; nothing is written after what ``data_to_send`` holds now."""

    exit_code: ExitCode
    reason: str


WorkerEvent = StartSample | StopSample | ConnectionEnded


@dataclass(frozen=True, slots=True)
class WorkerOffer:
    """What a worker says of itself in its ``welcome`` (besides the version chosen)."""

    worker: str
    pid: int
    host: str
    kernels: tuple[str, ...]
    max_inflight: int
    max_points: int = MAX_POINTS
    max_frame: int = MAX_FRAME
    versions: tuple[int, ...] = PROTOCOL_VERSIONS
    """The protocol versions it speaks (a fake may pretend to be an older worker)."""
    implementations: tuple[str, ...] = ()
    """Which implementation runs each kernel, in the order of ``kernels`` (or none said)."""

    def __post_init__(self) -> None:
        # What else the welcome made of it must be is checked by the protocol's own rules
        # for a welcome, when a WorkerEnd is made of it (with its jobs).
        if not self.kernels:
            raise ValueError("a worker must offer at least one kernel")


def _check_welcome(welcome: Welcome) -> None:
    """Raises ``ValueError`` where ``welcome`` breaks the rules a coordinator judges a
    welcome by (protocol.md §4.2, §5)."""
    problem = field_problem(welcome) or welcome.problem
    if problem is not None:
        raise ValueError(f"this worker's welcome would break the protocol: {problem}")


CLOSING_MESSAGE: Final = "worker is shutting down"
CANCELLED_MESSAGE: Final = "cancelled before it started"


class WorkerEnd:
    """The worker side of one connection. See the module docstring.

    ``jobs`` is how many samples may run at once (``StartSample`` events outstanding);
    the rest queue in arrival order, up to ``offer.max_inflight`` in all. ``record``
    keeps every message received and sent (``received``, ``sent``).
    """

    def __init__(self, offer: WorkerOffer, *, jobs: int = 1, record: bool = False) -> None:
        self.offer = offer
        self.jobs = jobs
        _check_welcome(self._welcome(max(offer.versions)))
        self.hello: Hello | None = None
        self.welcome: Welcome | None = None
        """The ``hello`` received and the ``welcome`` sent, once the handshake is done."""
        self.end: ConnectionEnded | None = None
        self._state = WorkerState.AWAIT_HELLO
        self._decoder = FrameDecoder(COORDINATOR_MESSAGES, offer.max_frame)
        self._running: dict[int, Sample] = {}
        self._queued: dict[int, Sample] = {}  # insertion order = arrival order
        self._out: list[bytes] = []
        self._output_lost = False
        self._closing_reason = ""
        self.received: list[Message] | None = [] if record else None
        self.sent: list[Message] | None = [] if record else None
        """With ``record``: every well-formed message received and every message written,
        in order (for test doubles that report what they saw)."""

    def __repr__(self) -> str:
        return (
            f"<WorkerEnd {self._state.value} running={len(self._running)} "
            f"queued={len(self._queued)}>"
        )

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def idle(self) -> bool:
        """Nothing running and nothing queued."""
        return not self._running and not self._queued

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def outstanding(self) -> int:
        """Samples accepted and not yet answered: running or queued."""
        return len(self._running) + len(self._queued)

    def data_to_send(self) -> bytes:
        """The bytes to write, in order; each call returns what accumulated since the last."""
        if not self._out:
            return b""
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        return data

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> list[WorkerEvent]:
        """Bytes arrived on the request stream. Bytes after ``shutdown`` are not read."""
        if self._state not in (WorkerState.AWAIT_HELLO, WorkerState.SERVING):
            return []
        self._decoder.feed(data)
        events: list[WorkerEvent] = []
        reading = (WorkerState.AWAIT_HELLO, WorkerState.SERVING)
        while self._state in reading:
            try:
                messages = self._decoder.next_messages()
            except RequestError as error:
                if error.request_id is None:
                    # Nobody can be told which message was bad: the stream is untrustworthy.
                    self._break(error.code, error.message, events)
                else:
                    self._send(Error(error.request_id, error.code, error.message))
                continue
            except FatalProtocolError as error:
                self._break(error.code, error.message, events)
                break
            if not messages:
                break
            for message in messages:
                if self._state not in reading:
                    break  # a shutdown (or a fatal error) came first: what follows is not read
                if self.received is not None:
                    self.received.append(message)
                self._handle(message, events)
        return events

    def receive_eof(self) -> list[WorkerEvent]:
        """The request stream ended: an orderly end at a frame boundary, fatal inside one."""
        if self._state not in (WorkerState.AWAIT_HELLO, WorkerState.SERVING):
            return []
        events: list[WorkerEvent] = []
        try:
            self._decoder.feed_eof()
        except FatalProtocolError as error:
            self._break(error.code, error.message, events)
            return events
        self._close("end of input", events)
        return events

    def sample_finished(
        self, request_id: int, insides: Sequence[int], elapsed_s: float, implementation: str = ""
    ) -> list[WorkerEvent]:
        """A started sample counted ``insides`` (one count per group of streams: one
        count for a plain sample) in ``elapsed_s`` seconds, with ``implementation``."""
        request = self._running.get(request_id)
        if request is None:
            raise LocalProtocolError(f"sample {request_id} is not running")
        if request.streams == 1 and request.group is None:
            # A plain sample (not ``is_range``), the common case, checked without the
            # general rule's calls: one count, from 0 to its points.
            if len(insides) == 1 and 0 <= (total := insides[0]) <= request.points:
                del self._running[request_id]
                self._send(Result(request_id, total, request.points, max(0.0, elapsed_s), None, implementation))
                return self._after_finish()
            raise LocalProtocolError(f"counts {list(insides)[:8]} do not fit sample {request}: one count of its points")
        counts = tuple(insides)
        problem = request.insides_problem(counts)
        total = sum(counts)
        if problem is not None or len(counts) != request.groups or min(counts) < 0 or total > request.total_points:
            raise LocalProtocolError(f"counts {list(counts)[:8]} do not fit sample {request}: {problem}")
        del self._running[request_id]
        result = Result(request_id, total, request.total_points, max(0.0, elapsed_s), counts, implementation)
        self._send(result)
        return self._after_finish()

    def sample_failed(self, request_id: int, code: ErrorCode | str, message: str) -> list[WorkerEvent]:
        """A started sample ended without a count: ``cancelled`` (it saw its stop flag) or
        ``internal`` (the kernel raised); a fake worker may give any code."""
        self._finish(request_id)
        self._send(Error(request_id, code, message))
        return self._after_finish()

    def output_lost(self) -> list[WorkerEvent]:
        """The response stream is closed (EPIPE): the coordinator is gone. Stop everything,
        write nothing more; an orderly end (exit 0)."""
        if self._output_lost:
            return []
        self._output_lost = True
        self._out.clear()
        events: list[WorkerEvent] = []
        if self._state in (WorkerState.CLOSED, WorkerState.ERROR):
            return events
        self._queued.clear()
        events += [StopSample(request_id) for request_id in self._running]
        self._state = WorkerState.CLOSING
        self._close_if_done("response stream closed by the coordinator", events)
        return events

    def fail_internal(self, message: str) -> list[WorkerEvent]:
        """The worker itself broke (a bug): a fatal ``internal`` error, exit 1."""
        events: list[WorkerEvent] = []
        if self._state not in (WorkerState.CLOSED, WorkerState.ERROR):
            self._break(ErrorCode.INTERNAL, message, events)
        return events

    # ------------------------------------------------------------------ messages

    def _handle(self, message: Message, events: list[WorkerEvent]) -> None:
        if isinstance(message, Sample):
            self._sample(message, events)
        elif isinstance(message, Ping):
            self._send(self._refusal(message.id) or Pong(message.id))
        elif isinstance(message, Cancel):
            self._cancel(message.id, events)
        elif isinstance(message, Hello):
            self._hello(message, events)
        elif isinstance(message, Shutdown):
            self._close("shutdown requested", events)
        else:  # the decoder accepts only the messages above
            raise AssertionError(f"unexpected message {message!r}")

    def _hello(self, hello: Hello, events: list[WorkerEvent]) -> None:
        if self._state is WorkerState.SERVING:
            # A hello carries no id, so the complaint cannot name a request: fatal.
            self._break(ErrorCode.INVALID_REQUEST, "a second hello", events)
            return
        version = negotiate_version(hello.versions, self.offer.versions)
        if version is None:
            self._break(
                ErrorCode.UNSUPPORTED_VERSION,
                f"no common protocol version: the coordinator speaks {_versions(hello.versions)}, "
                f"this worker speaks {list(self.offer.versions)}",
                events,
            )
            return
        self.welcome = self._welcome(version)
        self.hello = hello
        self._state = WorkerState.SERVING
        self._send(self.welcome)

    def offer_implementations(self, implementations: tuple[str, ...]) -> None:
        """Have the ``welcome`` say ``implementations`` (one per kernel of the offer, in its
        order, or none) in place of the offer's: what runs each kernel when the ``hello``
        comes, which a worker still loading a kernel at its start knows better then than
        when it made its ``WorkerEnd``. Before the handshake only: a ``welcome`` once sent
        stays as it was. Raises ``ValueError`` for a tuple neither empty nor one entry per
        kernel, or past what a welcome may hold (the rules a coordinator judges it by), and
        after the handshake."""
        if self._state is not WorkerState.AWAIT_HELLO:
            raise ValueError("the welcome has been sent (or the connection has ended)")
        offer, self.offer = self.offer, replace(self.offer, implementations=implementations)
        try:
            _check_welcome(self._welcome(max(offer.versions)))
        except ValueError:
            self.offer = offer
            raise

    def _welcome(self, version: int) -> Welcome:
        """The ``welcome`` this worker sends on a connection of protocol ``version``."""
        offer = self.offer
        return Welcome(
            version=version,
            worker=offer.worker,
            pid=offer.pid,
            host=offer.host,
            kernels=offer.kernels,
            max_inflight=offer.max_inflight,
            max_frame=offer.max_frame,
            max_points=offer.max_points,
            jobs=self.jobs,
            implementations=offer.implementations,
        )

    def _sample(self, request: Sample, events: list[WorkerEvent]) -> None:
        refused = self._refusal(request.id)
        if refused is None:
            welcome = self.welcome
            assert welcome is not None  # _refusal made sure the handshake is done
            # A plain sample (its fields valid: it was parsed) that the quick form of the
            # rule takes is taken by the rule (plain_verdict: held equal to it).
            plain = request.streams == 1 and request.group is None
            taken = plain and plain_verdict(welcome, request.kernel, request.points) is True
            unfit = None if taken else refusal(welcome, request)
            if unfit is not None:
                words = unfit.message if unfit.rule is Unfit.KERNEL else f"sample: {unfit.message}"
                refused = Error(request.id, unfit.code, words)
        if refused is None and self.outstanding >= self.offer.max_inflight:
            refused = Error(
                request.id,
                ErrorCode.BUSY,
                f"{self.offer.max_inflight} sample requests already outstanding",
            )
        if refused is not None:
            self._send(refused)
            return
        if len(self._running) < self.jobs and not self._queued:
            self._running[request.id] = request
            events.append(StartSample(request))
        else:
            self._queued[request.id] = request

    def _refusal(self, request_id: int) -> Error | None:
        """The error answering a request that cannot be served in this state, if any.
        Checked in this order (protocol.md §8, "Precedence")."""
        if self._state is WorkerState.AWAIT_HELLO:
            return Error(request_id, ErrorCode.HANDSHAKE_REQUIRED, "send hello first")
        if request_id in self._running or request_id in self._queued:
            return Error(request_id, ErrorCode.DUPLICATE_ID, f"id {request_id} is already outstanding")
        return None

    def _cancel(self, request_id: int, events: list[WorkerEvent]) -> None:
        if request_id in self._queued:
            del self._queued[request_id]
            self._send(Error(request_id, ErrorCode.CANCELLED, CANCELLED_MESSAGE))
        elif request_id in self._running:
            # The driver reports the one final response: "cancelled" if the kernel sees
            # its stop flag, the result if it finished first.
            events.append(StopSample(request_id))
        # Unknown, answered, or before hello: cancel is idempotent, nothing to do.

    # ------------------------------------------------------------------ endings

    def _finish(self, request_id: int) -> Sample:
        request = self._running.pop(request_id, None)
        if request is None:
            raise LocalProtocolError(f"sample {request_id} is not running")
        return request

    def _after_finish(self) -> list[WorkerEvent]:
        events: list[WorkerEvent] = []
        if self._state is WorkerState.SERVING:
            while self._queued and len(self._running) < self.jobs:
                request_id = next(iter(self._queued))
                request = self._queued.pop(request_id)
                self._running[request_id] = request
                events.append(StartSample(request))
        elif self._state is WorkerState.CLOSING:
            self._close_if_done(None, events)
        return events

    def _close(self, reason: str, events: list[WorkerEvent]) -> None:
        """Orderly end: answer every queued request ``cancelled``, stop the running ones,
        and close once they are answered (protocol.md §9)."""
        self._state = WorkerState.CLOSING
        for request_id in self._queued:
            self._send(Error(request_id, ErrorCode.CANCELLED, CLOSING_MESSAGE))
        self._queued.clear()
        events += [StopSample(request_id) for request_id in self._running]
        self._close_if_done(reason, events)

    def _close_if_done(self, reason: str | None, events: list[WorkerEvent]) -> None:
        if reason is not None:
            self._closing_reason = reason
        if self._running:
            return
        self._state = WorkerState.CLOSED
        self._end(ExitCode.OK, self._closing_reason, events)

    def _break(self, code: ErrorCode, message: str, events: list[WorkerEvent]) -> None:
        """Fatal end: one ``error`` frame with a nil id, then nothing more is written."""
        self._send(Error(None, code, message))
        self._state = WorkerState.ERROR
        self._queued.clear()
        events += [StopSample(request_id) for request_id in self._running]
        exit_code = ExitCode.INTERNAL if code is ErrorCode.INTERNAL else ExitCode.PROTOCOL
        self._end(exit_code, f"fatal protocol error: {code}: {message}", events)

    def _end(self, exit_code: ExitCode, reason: str, events: list[WorkerEvent]) -> None:
        self.end = ConnectionEnded(exit_code, reason)
        events.append(self.end)

    def _send(self, message: Welcome | Result | Pong | Error) -> None:
        if self._output_lost or self._state in (WorkerState.CLOSED, WorkerState.ERROR):
            return  # nothing is written after the end (§5, §9)
        if isinstance(message, Error):
            message = Error(message.id, message.code, bounded_text(message.message))
        if self.sent is not None:
            self.sent.append(message)
        self._out.append(encode(message))


def _versions(versions: tuple[int, ...]) -> str:
    shown = ", ".join(str(v) for v in versions[:8])
    return f"[{shown}{', …' if len(versions) > 8 else ''}]"
