"""The fake worker's behaviour, sans-IO: bytes and clock readings in, actions out.

``FakeWorkerCore`` is a synchronous state machine shared by both drivers of the
fake-worker kit: the in-process one (``testing.inprocess``, Trio tasks over OS
pipes) and the subprocess one (``python -m mcpi_coordinator.testing.fake_worker``,
a plain ``select`` loop over stdin/stdout). It never reads, writes or sleeps: the
driver feeds it what arrived on stdin and the current time, and performs the
``Action`` objects it returns, in order. Time is a parameter, so an in-process fake
under Trio's ``autojump_clock`` runs a "slow" worker instantly.

Undisturbed, the core is a faithful worker: it drives the real worker's protocol
state machine (``mcpi_worker.protocol.WorkerEnd``, the very rules ``mcpi-worker``
follows) and computes counts with the real ``mcpi_worker.kernels``, so a fake and a
real worker give identical answers (the contract tests check it). ``FakeBehaviour``
then asks it to misbehave in precise, countable ways, on top of those rules: it
replaces what the ``WorkerEnd`` would write, or stops before it writes.

The fake runs ``behaviour.jobs`` samples at a time (one by default), like a real
worker's compute threads: each takes ``behaviour.slow`` seconds of (fake) time, plus
``points / behaviour.points_per_s`` if set, and its count is computed in one go when it
is due. So pings, cancels and EOF are handled at once while a sample "runs" (waits
out ``slow``), but not during the count itself: model long samples with ``slow`` and
keep ``points`` small.
"""

from __future__ import annotations

import dataclasses
import json
import math
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from mcpi_worker import kernels, protocol
from mcpi_worker.protocol import (
    MAX_FRAME,
    ConnectionEnded,
    Error,
    ErrorCode,
    ExitCode,
    Result,
    Sample,
    StartSample,
    StopSample,
    WorkerEnd,
    WorkerEvent,
    WorkerOffer,
)
from mcpi_worker.sampling import count_groups

FAKE_WORKER_NAME: Final[str] = "mcpi-fake-worker"

EXIT_OK: Final[int] = ExitCode.OK
EXIT_PROTOCOL: Final[int] = ExitCode.PROTOCOL
"""The worker's documented exit codes: orderly end, fatal protocol error."""

GARBAGE: Final[bytes] = b"Traceback (most recent call last):\n  a stray print on stdout\n"
"""What ``garbage`` writes on stdout: text, as a stray ``print`` would. Read as a frame
header, "Trac" announces a 1.4 GB frame, which a careful reader refuses at once."""

UINT64_HALF: Final[int] = 1 << 63

BAD_ANSWERS: Final = frozenset({None, "inside", "points", "pong", "nan"})

STDERR_NOISE: Final[bytes] = b"\xff\xfe\x00\x1b[2J\x1b]0;owned\x07\r\xc3(not text, no newline"
"""What ``stderr_noise`` writes to stderr before each result: bytes that are no UTF-8
(a lone ``\\xff``, a torn sequence), a NUL, terminal escapes (clear the screen, set the
window title), a carriage return, and no line end: what a crashing library or a binary
dumped by mistake leaves on a worker's log channel."""


@dataclass(frozen=True)
class FakeBehaviour:
    """How a fake worker behaves. The default is a correct, fast worker.

    Counting: "after N" counts sample results the fake has sent. A crash or hang
    happens when the fake is about to *start* a sample with N results sent, so the
    coordinator always has work in flight when it happens. The stream faults
    (``garbage``, ``oversize``, ``wrong_id``, ``duplicate_id``, ``eof_mid_frame``) replace
    the response of the sample that would have been result number ``misbehave_after + 1``.

    Making one raises ``ValueError`` for options no worker could have: an unknown
    kernel, a negative count or rate, ``jobs`` or ``max_inflight`` below 1, ``jobs``
    above ``max_inflight``, an unknown ``bad_answer``.
    """

    crash_after: int | None = None
    """Exit with ``exit_code`` when starting a sample after this many results."""
    exit_code: int = 1
    """Exit code used by ``crash_after``, ``exit_at_start`` and ``eof_mid_frame``; a
    negative value -S means "killed by signal S", as ``Popen.returncode`` reports it."""
    hang_after: int | None = None
    """Stop reading and writing for ever (stdin EOF included) when starting a sample
    after this many results. Only a kill (or a terminate) ends it."""
    silent: bool = False
    """Never answer ``hello``: hang for ever before the handshake."""
    exit_at_start: bool = False
    """Exit with ``exit_code`` before reading anything, like a command that cannot start."""
    bad_version: bool = False
    """Answer ``hello`` with a ``welcome`` for protocol version 99, which nobody speaks."""
    ignore_sigterm: bool = False
    """``terminate()`` (SIGTERM) has no effect; only ``kill()`` (SIGKILL) does."""

    misbehave_after: int = 0
    """How many samples are answered correctly before the stream faults below start."""
    garbage: bool = False
    """Write ``GARBAGE`` text on stdout instead of a result, then carry on as if fine."""
    oversize: bool = False
    """Write a frame whose length prefix is ``MAX_FRAME + 1`` (header and body)."""
    wrong_id: bool = False
    """Answer with a result whose id was never sent (the right id + 2**63, mod 2**64)."""
    duplicate_id: bool = False
    """Send the result twice (every time, from ``misbehave_after`` on)."""
    eof_mid_frame: bool = False
    """Write the first half of the result frame, then exit with ``exit_code``."""
    bad_answer: str | None = None
    """Answer samples with a result that breaks the protocol's rules for an answer:
    ``"inside"`` (more inside than points), ``"points"`` (not the request's points),
    ``"pong"`` (a pong instead of a result), ``"nan"`` (``elapsed_s`` NaN)."""
    close_stdout_after: int | None = None
    """Close stdout (the protocol channel) when starting a sample after this many results,
    and live on without it: stdin is still read, samples still run (their answers go
    nowhere), and end of input or ``shutdown`` still ends it with 0."""
    ignore_cancel: bool = False
    """A ``cancel`` stops nothing: a running sample is answered with its result when it is
    due, as by a worker whose kernel never looks at its stop flag (a queued one is still
    answered ``cancelled`` by the protocol core)."""
    stderr_noise: bool = False
    """Write ``STDERR_NOISE`` (bytes that are no text) to stderr before every result."""
    leave_child: bool = False
    """When crashing (``crash_after``), leave a child process behind that holds the
    worker's stdin, stdout and stderr open (subprocess fake only; it writes
    ``left a child <pid>`` to stderr first)."""
    wrong_count: int = 0
    """Add this to the counts it reports (a plausible, silently wrong answer, as a bad
    DIMM or a different build would give), clamped to the sample's points; 0: honest."""
    wrong_count_streams: tuple[int, ...] | None = None
    """Only for these streams (None: every stream)."""
    wrong_count_times: int | None = None
    """Only for the first N wrong-able results (None: always)."""
    internal_errors: int = 0
    """Answer the first N samples with a retryable ``internal`` error instead of a result."""
    error_code: str = ErrorCode.INTERNAL
    """The code of the ``internal_errors`` answers. One that is not retryable (or that no
    protocol version has) plays a worker refusing what its welcome admits: the pool
    takes it as broken, replaces it and sends the sample elsewhere."""
    claimed_elapsed_s: float | None = None
    """Report this as every result's ``elapsed_s``, whatever it took (None: what it took):
    a worker lying about its time, which breaks no rule (the field is informational,
    valid when finite and not negative; ``bad_answer="nan"`` sends an invalid one)."""

    slow: float = 0.0
    """Seconds each sample takes per stream it counts (a range of streams takes as long as
    its streams one by one), on top of ``points_per_s``. Samples run ``jobs`` at a time, in
    arrival order."""
    points_per_s: float | None = None
    """Also take ``points / points_per_s`` seconds per sample (None: no time per point),
    so a fake can stand for a worker of a given speed (``benchmarks/scale.py``)."""
    jobs: int = 1
    """Samples it computes at once (its welcome's ``jobs``)."""
    made_up_counts: bool = False
    """Report ``points * 785398 // 1000000`` inside instead of computing the kernel: for
    benchmarks of the coordinator alone, where the kernel's real cost would swamp it.
    (The count is plausible, and wrong: never for tests of counts.)"""
    stderr_flood_mb: float = 0.0
    """Write this many MiB of text lines to stderr before the first result."""

    kernels: tuple[str, ...] = tuple(kernels.KERNELS)
    """Kernels offered in the ``welcome``; each must be one of ``mcpi_worker.kernels``."""
    max_inflight: int = 4
    """Sample requests accepted at once; more are answered ``busy``."""
    versions: tuple[int, ...] = protocol.PROTOCOL_VERSIONS
    """Protocol versions it speaks: ``(1,)`` plays a worker from before stream ranges."""

    def __post_init__(self) -> None:
        unknown = set(self.kernels) - set(kernels.KERNELS)
        if unknown:
            raise ValueError(f"unknown kernels {sorted(unknown)}; known: {list(kernels.KERNELS)}")
        for name in ("crash_after", "hang_after", "close_stdout_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.slow < 0 or self.stderr_flood_mb < 0 or self.misbehave_after < 0:
            raise ValueError("slow, stderr_flood_mb and misbehave_after must be >= 0")
        if self.max_inflight < 1 or self.jobs < 1:
            raise ValueError("max_inflight and jobs must be >= 1")
        if self.jobs > self.max_inflight:  # protocol.md 6.1: a welcome must not claim more
            raise ValueError(f"jobs ({self.jobs}) must be at most max_inflight ({self.max_inflight})")
        if self.points_per_s is not None and not self.points_per_s > 0:
            raise ValueError("points_per_s must be > 0")
        if self.wrong_count_times is not None and self.wrong_count_times < 0:
            raise ValueError("wrong_count_times must be >= 0")
        if self.claimed_elapsed_s is not None and not 0 <= self.claimed_elapsed_s < math.inf:
            raise ValueError("claimed_elapsed_s must be finite and >= 0")
        if self.bad_answer not in BAD_ANSWERS:
            raise ValueError(f"bad_answer must be one of {sorted(a for a in BAD_ANSWERS if a)}")

    @property
    def faults(self) -> dict[str, Any]:
        """The options that differ from a correct worker's, for logs and reprs."""
        default = FakeBehaviour()
        return {k: v for k, v in asdict(self).items() if getattr(default, k) != v}


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class WriteStdout:
    """Write these bytes to stdout (the protocol channel)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class WriteStderr:
    """Write these bytes to stderr (the log channel)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class FloodStderr:
    """Write ``nbytes`` of text lines to stderr; see ``flood_chunks``."""

    nbytes: int


@dataclass(frozen=True, slots=True)
class Exit:
    """Close every pipe and end the process with ``code`` (negative: by that signal)."""

    code: int


@dataclass(frozen=True, slots=True)
class Hang:
    """Stop doing anything for ever: no reads, no writes, deaf to EOF."""


@dataclass(frozen=True, slots=True)
class CloseStdout:
    """Close stdout and go on: the core writes nothing on it from then on."""


Action = WriteStdout | WriteStderr | FloodStderr | Exit | Hang | CloseStdout


def flood_chunks(nbytes: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    """``nbytes`` of newline-terminated text in chunks of about ``chunk`` bytes.

    Lines are ~1 KiB of plain text (not JSON), the way a chatty library floods stderr.
    """
    line = b"fake worker stderr flood " + b"x" * 998 + b"\n"
    lines_per_chunk = max(1, chunk // len(line))
    block = line * lines_per_chunk
    remaining = nbytes
    while remaining > 0:
        piece = block[:remaining]
        remaining -= len(piece)
        yield piece


def log_line(event: str, level: str = "info", **fields: object) -> bytes:
    """One JSON log line for stderr, shaped like the real worker's (``event``, ``level``)."""
    return (json.dumps({"event": event, "level": level, **fields}, default=str) + "\n").encode()


# ------------------------------------------------------------------------------ core


@dataclass
class _ScheduledSample:
    """A started sample and when the fake finishes it (its counts are computed then)."""

    request: Sample
    ready_at: float
    """When the sample finishes."""
    took: float
    """How long it "computed", as its result reports (``elapsed_s``)."""


@dataclass
class FakeStats:
    """What a fake worker saw and did; tests assert on it."""

    received: list[protocol.Message] = field(default_factory=list)
    """Every well-formed message received, in order."""
    results_sent: int = 0
    errors_sent: list[Error] = field(default_factory=list)


class FakeWorkerCore:
    """The fake worker's state machine. Drive it with ``start``, ``receive_data``,
    ``receive_eof`` and ``advance``; each returns the actions to perform, in order.

    ``deadline`` is the time at which ``advance`` has something to do (None: nothing
    until more input). ``finished`` turns True after an ``Exit`` or ``Hang`` action; from
    then on every method returns no actions. What the coordinator sends, however
    malformed, never raises here: the protocol core (``WorkerEnd``) turns it into the
    ``error`` frames (and, when fatal, the exit) a real worker would produce.
    """

    def __init__(self, behaviour: FakeBehaviour, pid: int, host: str | None = None) -> None:
        self.behaviour = behaviour
        self.pid = pid
        self.host = host if host is not None else socket.gethostname()
        self.finished = False
        offer = WorkerOffer(
            worker=FAKE_WORKER_NAME,
            pid=pid,
            host=self.host,
            kernels=behaviour.kernels,
            max_inflight=behaviour.max_inflight,
            versions=behaviour.versions,
        )
        self._worker_end = WorkerEnd(offer, jobs=behaviour.jobs, record=True)
        assert self._worker_end.received is not None
        self.stats = FakeStats(received=self._worker_end.received)
        self._jobs: list[_ScheduledSample] = []  # running, at most behaviour.jobs
        self._flood_pending = behaviour.stderr_flood_mb > 0
        self._internal_errors_left = behaviour.internal_errors
        self._wrong_counts_left = behaviour.wrong_count_times
        self._stdout_closed = False
        """``close_stdout_after`` struck: nothing is written on stdout any more."""
        self._closing_stdout: list[Action] = []
        """The actions that close stdout, due where the sample that struck starts."""

    # -------------------------------------------------------------- driver interface

    def start(self) -> list[Action]:
        """Actions to perform as the process starts, before any input."""
        if self.behaviour.exit_at_start:
            return self._exit(self.behaviour.exit_code, "exiting at start as asked")
        return [WriteStderr(log_line("fake worker started", pid=self.pid, **self.behaviour.faults))]

    def receive_data(self, data: bytes, now: float) -> list[Action]:
        """Bytes arrived on stdin at time ``now``."""
        return self._unwritten(self._receive_data(data, now))

    def _receive_data(self, data: bytes, now: float) -> list[Action]:
        if self.finished:
            return []
        greeted = self._worker_end.welcome is not None
        events = self._worker_end.receive_data(data)
        welcome = self._worker_end.welcome
        if not greeted and welcome is not None:
            if self.behaviour.silent:
                self._worker_end.data_to_send()  # the welcome it would have sent
                return self._hang("silent: never answering hello")
            if self.behaviour.bad_version:
                honest = protocol.encode(welcome)
                pending = self._worker_end.data_to_send()
                assert pending.startswith(honest), "the welcome is the first thing written"
                lying = protocol.encode(dataclasses.replace(welcome, version=99))
                return [WriteStdout(lying), *self._carry_out(events, now, pending[len(honest):])]
        return self._carry_out(events, now)

    def receive_eof(self, now: float) -> list[Action]:
        """stdin ended at time ``now``: an orderly end between frames, fatal inside one."""
        if self.finished:
            return []
        return self._unwritten(self._carry_out(self._worker_end.receive_eof(), now))

    @property
    def deadline(self) -> float | None:
        if self.finished or not self._jobs:
            return None
        return min(job.ready_at for job in self._jobs)

    def advance(self, now: float) -> list[Action]:
        """Finish the running sample if it is due by ``now``, and start the next ones."""
        actions: list[Action] = []
        while not self.finished and self._jobs:
            job = min(self._jobs, key=lambda j: j.ready_at)
            if job.ready_at > now:
                break
            self._jobs.remove(job)
            actions += self._finish(job)
        return self._unwritten(actions)

    def _unwritten(self, actions: list[Action]) -> list[Action]:
        """``actions`` less what they would write on stdout after it was closed."""
        if not self._stdout_closed:
            return actions
        closed = False
        kept: list[Action] = []
        for action in actions:
            if isinstance(action, CloseStdout):
                closed = True
            elif closed and isinstance(action, WriteStdout):
                continue
            kept.append(action)
        if not closed:  # closed by an earlier call: nothing of this one goes out
            kept = [action for action in actions if not isinstance(action, WriteStdout)]
        return kept

    # -------------------------------------------------------------------- events

    def _carry_out(self, events: list[WorkerEvent], now: float, written: bytes | None = None) -> list[Action]:
        """Act on the ``WorkerEnd``'s events; what it writes goes out before any exit."""
        actions: list[Action] = []
        pending: deque[WorkerEvent] = deque(events)
        while pending and not self.finished:
            event = pending.popleft()
            if isinstance(event, StartSample):
                start = self._start(event.request, now)
                if self._closing_stdout:  # after what was written before this sample
                    actions += self._output(written) + self._closing_stdout
                    written = None
                    self._closing_stdout = []
                if start:
                    actions += self._output(written)
                    written = None
                    return actions + start
            elif isinstance(event, StopSample):
                stopping = [job for job in self._jobs if job.request.id == event.request_id]
                if stopping and not self.behaviour.ignore_cancel:  # a fake sample stops at once
                    self._jobs.remove(stopping[0])
                    pending += self._worker_end.sample_failed(event.request_id, ErrorCode.CANCELLED, "cancelled")
            elif isinstance(event, ConnectionEnded):
                actions += self._output(written)
                written = None
                return actions + self._ended(event)
        return actions + self._output(written)

    def _output(self, written: bytes | None = None) -> list[Action]:
        data = (written or b"") + self._worker_end.data_to_send()
        self._note_sent()
        return [WriteStdout(data)] if data else []

    def _note_sent(self) -> None:
        sent = self._worker_end.sent
        assert sent is not None
        self.stats.errors_sent += [m for m in sent if isinstance(m, Error)]
        sent.clear()

    def _start(self, request: Sample, now: float) -> list[Action]:
        """The ``WorkerEnd`` started ``request``: run it for ``slow`` seconds, unless the
        behaviour says to crash or hang right here (with work in flight)."""
        b = self.behaviour
        if b.crash_after is not None and self.stats.results_sent >= b.crash_after:
            return self._exit(b.exit_code, f"crashing as asked (crash_after={b.crash_after})")
        if b.hang_after is not None and self.stats.results_sent >= b.hang_after:
            return self._hang(f"hanging as asked (hang_after={b.hang_after})")
        if (
            b.close_stdout_after is not None
            and self.stats.results_sent >= b.close_stdout_after
            and not self._stdout_closed
        ):
            self._stdout_closed = True
            why = log_line(f"closing stdout as asked (close_stdout_after={b.close_stdout_after})")
            self._closing_stdout = [WriteStderr(why), CloseStdout()]
        took = b.slow * request.streams + (0.0 if b.points_per_s is None else request.total_points / b.points_per_s)
        self._jobs.append(_ScheduledSample(request, now + took, took))
        return []

    def _finish(self, job: _ScheduledSample) -> list[Action]:
        b = self.behaviour
        request = job.request
        actions: list[Action] = []
        if self._flood_pending:
            self._flood_pending = False
            actions.append(FloodStderr(int(b.stderr_flood_mb * (1 << 20))))
        if b.stderr_noise:
            actions.append(WriteStderr(STDERR_NOISE))
        actions += self._output()  # anything written before: not part of the result
        if self._internal_errors_left > 0:
            self._internal_errors_left -= 1
            events = self._worker_end.sample_failed(request.id, b.error_code, "fake internal error")
            return actions + self._carry_out(events, job.ready_at)
        counts = self._reported_counts(request)
        count = sum(counts)
        misbehaving = self.stats.results_sent >= b.misbehave_after
        self.stats.results_sent += 1
        took = job.took if b.claimed_elapsed_s is None else b.claimed_elapsed_s
        events = self._worker_end.sample_finished(request.id, counts, took)
        frame = self._worker_end.data_to_send()  # the result frame, and nothing else
        self._note_sent()
        if misbehaving:
            replaced = self._misbehave(request, count, frame)
            if replaced is not None:
                # What the WorkerEnd goes on to do (start the next sample) still
                # happens, unless the misbehaviour ended the process.
                return actions + replaced + self._carry_out(events, job.ready_at)
        return actions + [WriteStdout(frame), *self._carry_out(events, job.ready_at)]

    def _reported_counts(self, request: Sample) -> list[int]:
        """The counts it reports: the true ones, unless it is to lie about this sample
        (then the first group's count is off by ``wrong_count``, staying plausible)."""
        b = self.behaviour
        if b.made_up_counts:
            sizes = [request.group_streams(index) for index in range(request.groups)]
            return [size * request.points * 785398 // 1000000 for size in sizes]
        counts = count_groups(kernels.KERNELS[request.kernel], request)
        if b.wrong_count == 0:
            return counts
        streams = range(request.stream, request.stream + request.streams)
        if b.wrong_count_streams is not None and not set(b.wrong_count_streams) & set(streams):
            return counts
        if self._wrong_counts_left is not None:
            if self._wrong_counts_left == 0:
                return counts
            self._wrong_counts_left -= 1
        most = request.group_streams(0) * request.points
        wrong = counts[0] + b.wrong_count
        if not 0 <= wrong <= most:  # keep it plausible: the other way
            wrong = counts[0] - b.wrong_count
        counts[0] = min(max(wrong, 0), most)
        return counts

    def _misbehave(self, request: Sample, count: int, frame: bytes) -> list[Action] | None:
        """What goes out instead of the honest result ``frame``; None: the frame itself."""
        b = self.behaviour
        if b.garbage:
            return [WriteStderr(log_line("writing garbage as asked")), WriteStdout(GARBAGE)]
        if b.oversize:
            body = b"\xc0" * (MAX_FRAME + 1)  # msgpack nil bytes: well-formed, just too many
            return [
                WriteStderr(log_line("writing an oversize frame as asked")),
                WriteStdout(protocol.HEADER.pack(len(body)) + body),
            ]
        if b.eof_mid_frame:
            return [
                WriteStdout(frame[: len(frame) // 2]),
                *self._exit(b.exit_code, "ending stdout inside a frame as asked"),
            ]
        if b.wrong_id:
            wrong = (request.id + UINT64_HALF) % (1 << 64)
            return [WriteStdout(protocol.encode(Result(wrong, count, request.total_points, b.slow)))]
        if b.duplicate_id:
            return [WriteStdout(frame + frame)]
        if b.bad_answer is not None:
            bad: protocol.Message
            bad = {
                "inside": Result(request.id, request.total_points + 1, request.total_points, b.slow),
                "points": Result(request.id, count, request.total_points + 1, b.slow),
                "pong": protocol.Pong(request.id),
                "nan": Result(request.id, count, request.total_points, math.nan),
            }[b.bad_answer]  # type: ignore[assignment]
            return [WriteStdout(protocol.encode(bad))]
        return None

    # ---------------------------------------------------------------------- endings

    def _ended(self, end: ConnectionEnded) -> list[Action]:
        if end.exit_code == ExitCode.OK:
            return [WriteStderr(log_line("fake worker exiting", reason=end.reason)), *self._exit(EXIT_OK)]
        return [
            WriteStderr(f"mcpi-fake-worker: {end.reason}\n".encode()),
            *self._exit(int(end.exit_code)),
        ]

    def _exit(self, code: int, why: str | None = None) -> list[Action]:
        self.finished = True
        actions: list[Action] = []
        if why is not None:
            actions.append(WriteStderr(log_line(why, exit_code=code)))
        return actions + [Exit(code)]

    def _hang(self, why: str) -> list[Action]:
        self.finished = True
        return [WriteStderr(log_line(why)), Hang()]
