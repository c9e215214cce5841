"""The coordinator's end of a connection, sans-IO: ids, the in-flight table, answer checks,
the stall deadline (protocol.md §5–§9, as a coordinator must apply them).

``CoordinatorEnd`` is a synchronous state machine, driven by the Trio pool
(``mcpi_coordinator.connection``) and the one-shot benchmark client alike (the testing
client, ``mcpi_coordinator.testing.client``, uses only the framing: it must see what a
worker sent, right or wrong). Requests go in with ``send_sample``/``send_ping`` (each
returns its new id) and ``cancel``; bytes from the worker go in with
``receive_data``/``receive_eof``; clock readings are parameters (``now``), so a test's
fake clock drives the deadlines. Each call returns events (``Welcomed``, ``Answered``,
``Broken``) and leaves the bytes to write in ``data_to_send()``. Nothing here reads,
writes, sleeps, or calls back.

Every message from the worker is checked completely before anything is committed: an
answer for an id not in flight, a ``pong`` for a sample, a ``result`` whose ``points``
differ from the request's or whose ``inside`` exceeds them, a second ``welcome``, a
fatal ``error``, an ``error`` that is not retryable (every request sent here is one the
worker's ``welcome`` admits, so refusing it for good contradicts that welcome:
``_broken_welcome``) — each breaks the connection (``Broken``) with the request still
in the table, so it is handed back (``Broken.orphans``) exactly once, never lost. The
only ``error`` answers that come out as ``Answered`` are the retryable ones (``busy``,
``cancelled``, ``internal``).

A result's ``elapsed_s`` (seconds its kernel ran: informational, by the worker's own
clock) is valid when finite and not negative (the field table); it is also bounded
here by what this side saw, since a kernel runs after its request was sent: a longer
claim (a worker that lies, or whose clock runs fast) comes out of ``Answered`` cut to
the time from the sending to ``now``. Everything the coordinator derives from it (the
jobs the worker shows, its speed, a slot's busy seconds) is then bounded by its own
clock: a worker claiming 1e300 s could otherwise show every job of its welcome at work
at once, and two such answers added up made a slot's ``busy_s`` infinite.

The stall deadline. A worker starts samples in arrival order and answers pings at once.
Only the oldest outstanding sample is charged for its time, from the later of its
sending and the moment it became the oldest: that one the worker is surely computing,
whatever its ``welcome.jobs`` says (a worker overstating ``jobs`` computes the others
one after another, and charging them from their sending killed it for samples it had
only queued). A sample hung beside others that are answered becomes the oldest, and is
charged, once those are. ``next_deadline()`` is the earliest moment the oldest sample,
or the oldest ping, overruns its ``task_budget``; answers to other requests (a pong, a
newer sample's result) never move it later.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Final

from mcpi_worker.protocol.admission import Unfit, plain_verdict, refusal
from mcpi_worker.protocol.checked import CheckedSampleFields
from mcpi_worker.protocol.framing import FrameDecoder, encode, encode_plain_sample, frame_problem
from mcpi_worker.protocol.messages import (
    HEADER,
    PROTOCOL_VERSIONS,
    WORKER_MESSAGES,
    Cancel,
    Error,
    ErrorCode,
    FatalProtocolError,
    Hello,
    LocalProtocolError,
    Ping,
    Pong,
    RequestError,
    Result,
    Sample,
    Shutdown,
    Welcome,
    WorkerMessage,
    field_problem,
    sample_work,
)


class CoordinatorState(Enum):
    AWAIT_WELCOME = "await_welcome"
    SERVING = "serving"
    CLOSING = "closing"
    """``shutdown`` sent: no new requests; answers still arrive and are checked."""
    CLOSED = "closed"
    """The worker's output ended in order after ``shutdown``."""
    BROKEN = "broken"
    """The worker broke the rules, its stream ended early, or the driver gave up on it."""


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Welcomed:
    welcome: Welcome


@dataclass(frozen=True, slots=True)
class Answered:
    """The one final answer to request ``request_id``. ``token`` is what the request was
    sent with; ``abandoned`` is True when it was cancelled (``cancel``) and nobody
    waits for the answer any more — it still frees the worker's room for one request."""

    request_id: int
    answer: Result | Pong | Error
    token: Any
    abandoned: bool


@dataclass(frozen=True, slots=True)
class Orphan:
    """A request still in flight when the connection broke: it will never be answered.
    ``was_running`` is False for one that was only queued behind the running ones (True
    for the one whose answer broke the connection, queued or not: a refusal for good)."""

    request_id: int
    token: Any
    was_running: bool
    abandoned: bool


@dataclass(frozen=True, slots=True)
class Broken:
    """The connection is over: ``reason`` (one line), and every request it still had."""

    reason: str
    orphans: tuple[Orphan, ...]


CoordinatorEvent = Welcomed | Answered | Broken


class _InFlight:
    __slots__ = (
        "abandoned", "budget_s", "could_start_at", "is_ping", "points", "running", "sample", "sent_at", "token",
    )  # fmt: skip

    def __init__(self, points: int, is_ping: bool, budget_s: float, token: Any, sent_at: float) -> None:
        self.points = points
        """All the points it asks for (every stream of a range)."""
        self.sample: Sample | None = None
        """The range sent, whose result's counts per group must fit it (None for a plain
        sample, whose result is checked by its ``points``, and for a ping)."""
        self.is_ping = is_ping
        self.budget_s = budget_s
        self.token = token
        self.abandoned = False
        self.running = False
        self.could_start_at = math.inf
        self.sent_at = sent_at
        """When it was sent: its kernel cannot have run for longer than since then."""


_PLAIN: Final = Sample(0, 0, 0, 0, "")
"""A plain sample, for ``Sample.insides_problem`` of a plain sample's answer: what it says
of the counts answering one depends on no field but that it is not a range."""

_KNOWN_CODES: Final = frozenset(ErrorCode)
"""The codes of protocol.md §8 (the same on versions 1 and 2)."""

_Checked = tuple[int, _InFlight, Result | Pong | Error]
"""An answer found valid: its id, its entry in the in-flight table, and the answer."""


class _Violation(Exception):
    """What the worker did wrong, found while checking a message (nothing committed yet).
    ``blamed``: the request its wrong answer answered, charged as if it was computing it."""

    def __init__(self, reason: str, blamed: int | None = None) -> None:
        super().__init__(reason)
        self.blamed = blamed


SHOWN_MIN_S = 0.001
"""Results whose kernels ran less than this show nothing of how many run at once: a
burst of tiny ones read together would look concurrent."""

SHOWN_OVERLAP = 0.5
"""Two results count as computed together when their kernels' times overlap for more
than this fraction of the shorter one (see ``CoordinatorEnd.jobs_shown``)."""

SHOWN_WINDOW = 64
"""Latest results remembered for ``jobs_shown`` (at least twice the worker's ``jobs``)."""

TaskBudget = Callable[[int], float]
"""Seconds a request may take once it could have started, given its work counted in
points (``Sample.work``: its points and each stream's set-up; 0 for a ping). A function
of the work alone: a ``CoordinatorEnd`` may ask it once for many requests of one size."""


class CoordinatorEnd:
    """The coordinator side of one connection. See the module docstring.

    The ``hello`` (with ``versions``, naming ``client``, and ``expected_points`` when
    given: the size hint of protocol.md §5.1) is the first thing in ``data_to_send()``.
    Requests may be sent once ``Welcomed`` (state ``SERVING``), and only requests the
    ``welcome`` allows (``LocalProtocolError`` otherwise: a bug here, not in the worker).
    """

    def __init__(
        self,
        *,
        client: str,
        task_budget: TaskBudget,
        versions: tuple[int, ...] = PROTOCOL_VERSIONS,
        expected_points: int | None = None,
    ) -> None:
        self._versions = versions
        self._task_budget = task_budget
        self._state = CoordinatorState.AWAIT_WELCOME
        self._decoder = FrameDecoder(WORKER_MESSAGES)
        self.welcome: Welcome | None = None
        self.broken: Broken | None = None
        self._next_id = 1  # ids are never reused on a connection
        self._jobs = 1
        self._samples: dict[int, _InFlight] = {}  # insertion order = send order
        self._jobs_shown = 1
        self._computed: deque[tuple[float, float]] = deque(maxlen=SHOWN_WINDOW)
        """When the latest results' kernels ran, by this side's clock: (start, end)."""
        self._pings: dict[int, _InFlight] = {}
        self._running = 0  # samples flagged running: the first min(jobs, len) of _samples
        self._deadline = math.inf
        self._restarted: set[int] = set()
        """The requests in flight whose clock ``restart_clocks`` has restarted once already."""
        self._out: list[bytes] = [encode(Hello(versions, client, expected_points))]
        self._plain_points = -1
        self._plain_budget_s = math.inf
        """The budget of the last plain sample's points (``task_budget`` is a function of
        the work alone: asked once per size, not once per request)."""

    def __repr__(self) -> str:
        return f"<CoordinatorEnd {self._state.value} in_flight={self.in_flight}>"

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> CoordinatorState:
        return self._state

    @property
    def usable(self) -> bool:
        """Requests may be sent."""
        return self._state is CoordinatorState.SERVING

    @property
    def jobs_shown(self) -> int:
        """How many samples the worker has been seen computing at once (1 at first, at
        most ``welcome.jobs``): the most results whose kernels ran at the same time, by
        when each arrived less its ``elapsed_s`` (no earlier than its sending: the module
        docstring), two counting together only when they
        overlapped for most of the shorter one's time (results read together overlap
        only by as long as the read was late). A worker claiming more ``jobs`` than it
        computes at once never shows them; a coordinator sizes its pipeline on this. (A
        worker that says each kernel ran from the moment it was sent still shows up to
        as many as it had in flight: a claim can be bounded, not checked.)"""
        return self._jobs_shown

    @property
    def in_flight(self) -> int:
        """Requests sent and not finally answered (pings and abandoned ones included)."""
        return len(self._samples) + len(self._pings)

    def data_to_send(self) -> bytes:
        """The bytes to write, in order; each call returns what accumulated since the last."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def next_deadline(self) -> float:
        """When the first request that could have started overruns its budget (``math.inf``
        when nothing is in flight, or once the connection is over)."""
        return self._deadline

    # ------------------------------------------------------------------ requests

    def send_sample(
        self,
        seed: int,
        stream: int,
        points: int,
        kernel: str,
        *,
        streams: int = 1,
        group: int | None = None,
        now: float,
        token: Any = None,
    ) -> int:
        """Send one ``sample`` (``streams`` consecutive streams of ``points`` points each,
        counted per ``group`` of streams: a range needs version 2); return its id.
        ``token`` comes back with its answer.

        Raises ``LocalProtocolError``, with nothing sent, outside state ``SERVING``, and
        for a sample the worker would refuse (``admission.refusal``), whose fields break
        the field table (``messages.field_problem``) or whose frame is above the worker's
        ``max_frame`` (``framing.frame_problem``)."""
        return self._send_sample(seed, stream, points, kernel, streams, group, now, token, False)

    def send_checked(self, fields: CheckedSampleFields, *, now: float, token: Any = None) -> int:
        """``send_sample`` for fields checked against the field table where they were made
        (``protocol.checked``: the pool's ``Chunk``), which are not checked again here; a
        range is counted stream by stream (``group`` 1). Every other check of
        ``send_sample`` applies, and raises as there."""
        streams = fields.streams
        return self._send_sample(
            fields.seed, fields.stream, fields.points, fields.kernel, streams, None if streams == 1 else 1, now, token,
            True,
        )  # fmt: skip

    def _send_sample(
        self,
        seed: int,
        stream: int,
        points: int,
        kernel: str,
        streams: int,
        group: int | None,
        now: float,
        token: Any,
        fields_checked: bool,
    ) -> int:
        """``send_sample``, and ``send_checked`` (``fields_checked``: the id is this end's
        own, and the other fields were checked where they were made)."""
        welcome = self.welcome  # ``_require_serving``, without a call per request
        if self._state is not CoordinatorState.SERVING or welcome is None:
            welcome = self._require_serving()  # raises
        request_id = self._next_id
        # A plain sample the quick form of the rule takes (``plain_verdict``: held equal to
        # ``sending_problem`` for valid fields) is neither refused nor too large a frame
        # once its fields are found valid below: the common case asks the rule once.
        taken = streams == 1 and group is None and plain_verdict(welcome, kernel, points) is True
        if taken and fields_checked:
            # Every request of a pool's run: nothing left to check, and nothing to keep
            # but its points (a plain sample's answer is checked by them alone), so no
            # Sample is built to be encoded.
            frame = encode_plain_sample(request_id, seed, stream, points, kernel)
            sample = None
            if points != self._plain_points:  # a run's samples are mostly of one size
                self._plain_points = points
                self._plain_budget_s = self._task_budget(sample_work(points))
        else:
            sample = Sample(request_id, seed, stream, points, kernel, streams, group)
            if not taken:
                unfit = refusal(welcome, sample)  # before the fields: a count above MAX_POINTS is above max_points
                if unfit is not None and unfit.rule is Unfit.KERNEL:
                    raise LocalProtocolError(f"the worker does not offer kernel {kernel!r}")
                if unfit is not None:
                    raise LocalProtocolError(f"the worker would refuse it: {unfit.message}")
            if not fields_checked and (invalid := field_problem(sample)) is not None:
                raise LocalProtocolError(f"not a valid sample: {invalid}")
            frame = encode(sample)
            if not taken:
                self._check_frame(frame, welcome)
        self._next_id = request_id + 1
        if sample is None:
            request = _InFlight(points, False, self._plain_budget_s, token, now)
        else:
            request = _InFlight(sample.total_points, False, self._task_budget(sample.work), token, now)
            request.sample = sample if sample.is_range else None
        if self._running < self._jobs:
            request.running = True  # blamed if the worker breaks: it may have been computing it
            self._running += 1
        if not self._samples:  # the oldest: charged from now
            request.could_start_at = now
            self._deadline = min(self._deadline, now + request.budget_s)
        self._samples[request_id] = request
        self._out.append(frame)
        return request_id

    def send_ping(self, *, now: float, token: Any = None) -> int:
        """Send one ``ping``; return its id. Answered at once by a worker, so it is charged
        from its sending; it does not count toward ``max_inflight``."""
        welcome = self._require_serving()
        frame = encode(Ping(self._next_id))
        self._check_frame(frame, welcome)
        request_id = self._next_id
        self._next_id = request_id + 1
        request = _InFlight(0, True, self._task_budget(0), token, now)
        request.running = True
        request.could_start_at = now
        if not self._pings:
            due = now + request.budget_s
            self._deadline = min(self._deadline, due)
        self._pings[request_id] = request
        self._out.append(frame)
        return request_id

    def cancel(self, request_id: int) -> bool:
        """Abandon a request: its answer will come as ``Answered`` with ``abandoned`` True.
        Sends ``cancel`` once while serving; after ``shutdown`` nothing may follow
        (protocol.md §9), and the shutdown stops every request anyway. Nor is a ``cancel``
        sent to a worker whose ``welcome.max_frame`` has no room for it (a ``cancel`` is two
        bytes longer than the ``ping`` it may cancel): the request then runs to its end,
        and its answer is waited for as any abandoned one's (§2, §7). True if the request
        is abandoned now; False (and nothing sent) if it is not in flight, already
        abandoned, or the connection is over."""
        request = self._samples.get(request_id) or self._pings.get(request_id)
        if request is None or request.abandoned:
            return False
        request.abandoned = True
        if self._state is CoordinatorState.CLOSING:
            return True
        if self._state is not CoordinatorState.SERVING:
            return False
        self._send_if_it_fits(encode(Cancel(request_id)))
        return True

    def shutdown(self) -> None:
        """Send ``shutdown``: the worker cancels what it has queued, answers everything and
        exits. No request may follow it. A worker whose ``welcome.max_frame`` has no room
        for the ``shutdown`` frame is not sent one (protocol.md §2, §9): the end of its
        stdin, which the driver sends next, ends it in order all the same."""
        if self._state in (CoordinatorState.AWAIT_WELCOME, CoordinatorState.SERVING):
            self._send_if_it_fits(encode(Shutdown()))
            self._state = CoordinatorState.CLOSING

    @staticmethod
    def _check_frame(frame: bytes, welcome: Welcome) -> None:
        if (problem := frame_problem(len(frame) - HEADER.size, welcome.max_frame)) is not None:
            raise LocalProtocolError(f"the worker would refuse it: {problem}")

    def _send_if_it_fits(self, frame: bytes) -> None:
        """Queue a notification, unless the worker's ``welcome.max_frame`` has no room for
        it (a frame above it is fatal to the worker, §2). Before the ``welcome`` the limit
        is not known, and every notification fits the 65 536 bytes a worker SHOULD take."""
        welcome = self.welcome
        if welcome is None or frame_problem(len(frame) - HEADER.size, welcome.max_frame) is None:
            self._out.append(frame)

    def _require_serving(self) -> Welcome:
        if self._state is not CoordinatorState.SERVING or self.welcome is None:
            raise LocalProtocolError(f"cannot send a request in state {self._state.value}")
        return self.welcome

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[CoordinatorEvent]:
        """Bytes arrived from the worker's stdout at time ``now``."""
        if self.broken is not None or self._state is CoordinatorState.CLOSED:
            return []
        decoder = self._decoder
        decoder.feed(data)
        events: list[CoordinatorEvent] = []
        try:
            # Each message checked, then committed, before the next is looked at.
            while messages := decoder.next_messages():
                for message in messages:
                    events.append(self._commit(self._check(message), now))  # type: ignore[arg-type]
        except (FatalProtocolError, RequestError) as error:
            # A worker's message that does not parse cannot be answered: the
            # connection is over, whatever the code (protocol.md §5).
            kind = "protocol error" if isinstance(error, FatalProtocolError) else "invalid message"
            return [*events, self._break(f"{kind}: {error.code}: {error.message}")]
        except _Violation as violation:
            return [*events, self._break(str(violation), violation.blamed)]
        return events

    def receive_eof(self, now: float) -> list[CoordinatorEvent]:
        """The worker's stdout ended. Orderly only after ``shutdown``, at a frame boundary,
        with nothing left in flight."""
        if self.broken is not None or self._state is CoordinatorState.CLOSED:
            return []
        try:
            self._decoder.feed_eof()
        except FatalProtocolError as error:
            return [self._break(f"protocol error: {error.code}: {error.message}")]
        if self._state is CoordinatorState.CLOSING and not self.in_flight:
            self._state = CoordinatorState.CLOSED
            self._deadline = math.inf
            return []
        if self._state is CoordinatorState.AWAIT_WELCOME:
            return [self._break("closed its stdout before its welcome")]
        if self._state is CoordinatorState.CLOSING:
            unanswered = self.in_flight
            return [self._break(f"closed its stdout after shutdown, {unanswered} requests unanswered")]
        return [self._break("closed its stdout")]

    def fail(self, reason: str) -> list[CoordinatorEvent]:
        """The driver gave up on the worker (it exited, a pipe broke, the pool closed it):
        ``[Broken]`` with every request still in flight, or ``[]`` if it already broke."""
        if self.broken is not None or self._state is CoordinatorState.CLOSED:
            return []
        return [self._break(reason)]

    def restart_clocks(self, now: float) -> None:
        """Charge the requests in flight from ``now``, as if just sent: the driver was not
        running for a while (stopped by SIGSTOP or Ctrl-Z, or starved of CPU) and its
        clock ran on without it, so how long a worker has had is not known, and a worker
        is not charged for time its coordinator was away (it may have answered
        meanwhile, or not yet been sent what was queued). A worker that is really stuck
        is judged one budget later.

        Once per request: a request whose clock was restarted already is charged on
        from then. Else a coordinator away at every ring (starved of CPU for good, or
        stopped again and again) gave every request a fresh budget at each ring, and a
        hung worker was never judged. The price: stopped past the budget twice during
        one request, the coordinator judges that request's worker at the second late
        ring, though the worker may have had less than a budget of the coordinator's
        running time."""
        restarted: set[int] = set()
        for table in (self._pings, self._samples):
            for request_id, request in table.items():
                if request.could_start_at == math.inf:  # a queued sample is not charged yet
                    continue
                if request_id not in self._restarted:
                    request.could_start_at = now
                restarted.add(request_id)
        self._restarted = restarted  # those still in flight only: the set stays small
        if self._deadline != math.inf:
            self._deadline = self._earliest_deadline()

    def advance(self, now: float) -> list[CoordinatorEvent]:
        """The clock reads ``now``: ``[Broken]`` if a request has overrun its budget."""
        if self.broken is not None or now < self._deadline:
            return []
        charged = [next(iter(table.values())) for table in (self._pings, self._samples) if table]
        overdue = min(charged, key=lambda r: r.could_start_at + r.budget_s)
        return [self._break(f"no answer within the task timeout ({overdue.budget_s:g} s)")]

    # ------------------------------------------------------------------ checking

    def _check(self, message: WorkerMessage) -> Welcome | _Checked:
        """Everything wrong with ``message``, as a ``_Violation``; nothing is changed here."""
        if isinstance(message, Welcome):
            if self.welcome is not None:
                raise _Violation("sent a second welcome")
            if message.version not in self._versions:
                raise _Violation(
                    f"chose protocol version {message.version}; we offered {list(self._versions)}"
                )
            if (problem := message.problem) is not None:
                raise _Violation(problem)
            return message
        if isinstance(message, Error) and message.fatal:
            raise _Violation(f"reported a fatal error: {message.code}: {message.message}")
        if self.welcome is None:
            raise _Violation(f"sent a {message.TYPE} before its welcome")
        assert message.id is not None  # a nil id is fatal, above
        request_id = message.id
        request = self._samples.get(request_id) or self._pings.get(request_id)
        if request is None:
            raise _Violation(f"answered request id {request_id}, which is not in flight")
        if isinstance(message, Error) and not message.retryable:
            raise _Violation(self._broken_welcome(request_id, message), blamed=request_id)
        if isinstance(message, Pong) and not request.is_ping:
            raise _Violation(f"answered the sample request id {request_id} with a pong")
        if isinstance(message, Result):
            if request.is_ping:
                raise _Violation(f"answered the ping request id {request_id} with a result")
            if message.points != request.points:
                raise _Violation(
                    f"answered {message.points} points for request id {request_id} "
                    f"of {request.points}"
                )
            if message.inside > message.points:
                raise _Violation(
                    f"counted {message.inside} inside out of {message.points} points "
                    f"(request id {request_id})"
                )
            if message.insides is not None or request.sample is not None:  # else nothing to check
                self._check_groups(request_id, request, message)
        return request_id, request, message

    def _broken_welcome(self, request_id: int, error: Error) -> str:
        """Why a refusal for good (an ``error`` that is not retryable) of a request this
        end sent breaks the worker: every request goes out only once the worker's
        ``welcome`` admits it (``admission.refusal``, the field table, ``max_frame``),
        with a fresh id, after the ``welcome``, and of a type of §4.1. So such a refusal
        (``unknown_kernel`` of an offered kernel, ``invalid_request``, ``duplicate_id``,
        ``handshake_required``, ``unknown_type``) contradicts the worker's own welcome,
        and a code its protocol version does not have is no answer either (protocol.md
        §8: a coordinator that checked the request may take either as the worker
        breaking its welcome). The request goes to another worker (``Broken``), whose
        answer decides it: a worker that counts it honestly gives its count, and a
        request every worker refuses runs out of its attempts (a bug of this side)."""
        assert self.welcome is not None
        if error.code in _KNOWN_CODES:
            return (
                f"refused request id {request_id}, which its welcome admits: {error.code}: {error.message}"
            )
        return (
            f"refused request id {request_id} with a code protocol version {self.welcome.version} "
            f"does not have: {error.code}: {error.message}"
        )

    @staticmethod
    def _check_groups(request_id: int, request: _InFlight, result: Result) -> None:
        """A range's counts per group: as many as it has groups, each possible, their
        sum ``inside``; none for a plain sample."""
        problem = (request.sample or _PLAIN).insides_problem(result.insides)
        if problem is not None:
            raise _Violation(f"sent {problem} (request id {request_id})")
        if result.insides is not None and sum(result.insides) != result.inside:
            raise _Violation(f"its counts per group do not add up to its inside (request id {request_id})")

    def _commit(self, checked: Welcome | _Checked, now: float) -> CoordinatorEvent:
        if isinstance(checked, Welcome):
            self.welcome = checked
            self._jobs = checked.jobs
            self._computed = deque(maxlen=max(SHOWN_WINDOW, 2 * checked.jobs))
            if self._state is CoordinatorState.AWAIT_WELCOME:
                self._state = CoordinatorState.SERVING
            return Welcomed(checked)
        request_id, request, answer = checked
        if isinstance(answer, Result):
            seen_s = now - request.sent_at
            if answer.elapsed_s > seen_s:  # longer than since it was sent (module docstring)
                answer = replace(answer, elapsed_s=max(seen_s, 0.0))
            if self._jobs_shown < self._jobs:
                self._note_computed(now - answer.elapsed_s, now)
        if request.is_ping:
            del self._pings[request_id]
        else:
            oldest = next(iter(self._samples)) == request_id
            del self._samples[request_id]
            if request.running:
                self._running -= 1
                self._start_next()
            if oldest and self._samples:
                next(iter(self._samples.values())).could_start_at = now
        if request.running:
            self._deadline = self._earliest_deadline()
        return Answered(request_id, answer, request.token, request.abandoned)

    def _note_computed(self, start: float, end: float) -> None:
        length = end - start
        if length >= SHOWN_MIN_S:
            together = 1 + sum(
                1
                for other_start, other_end in self._computed
                if min(end, other_end) - max(start, other_start)
                > SHOWN_OVERLAP * min(length, other_end - other_start)
            )
            self._jobs_shown = min(self._jobs, max(self._jobs_shown, together))
            self._computed.append((start, end))

    def _start_next(self) -> None:
        """A running sample was answered: the oldest queued one may start now."""
        if len(self._samples) <= self._running:
            return
        for request in self._samples.values():
            if not request.running:
                request.running = True
                self._running += 1
                return

    def _earliest_deadline(self) -> float:
        deadline = math.inf
        for table in (self._pings, self._samples):
            if table:
                first = next(iter(table.values()))
                deadline = min(deadline, first.could_start_at + first.budget_s)
        return deadline

    def _break(self, reason: str, blamed: int | None = None) -> Broken:
        """``blamed``: a request answered wrongly, charged as one being computed (a worker
        may refuse a request it only queued)."""
        orphans = tuple(
            Orphan(request_id, request.token, _was_running(request, request_id == blamed), request.abandoned)
            for table in (self._samples, self._pings)
            for request_id, request in table.items()
        )
        self._samples.clear()
        self._pings.clear()
        self._running = 0
        self._deadline = math.inf
        self._out.clear()  # nothing more goes to a worker we gave up on
        self._state = CoordinatorState.BROKEN
        self.broken = Broken(reason, orphans)
        return self.broken


def _was_running(request: _InFlight, blamed: bool) -> bool:
    """Whether a request handed back by a broken connection is charged as computed there:
    a sample the worker was running, or the request its wrong answer answered."""
    return blamed or (request.running and not request.is_ping)
