"""The fake worker's behaviour, sans-IO: bytes and clock readings in, actions out.

``FakeWorkerCore`` is a synchronous state machine shared by both drivers of the
fake-worker kit: the in-process one (``testing.inprocess``, Trio tasks over OS
pipes) and the subprocess one (``python -m mcpi_coordinator.testing.fake_worker``,
a plain ``select`` loop over stdin/stdout). It never reads, writes or sleeps: the
driver feeds it what arrived on stdin and the current time, and performs the
``Action`` objects it returns, in order. Time is a parameter, so an in-process fake
under Trio's ``autojump_clock`` runs a "slow" worker instantly.

Undisturbed, the core is a faithful worker: it speaks the real protocol through
``mcpi_worker.protocol`` and computes counts with the real ``mcpi_worker.kernels``,
so a fake and a real worker give identical answers (the contract tests check it).
``FakeBehaviour`` then asks it to misbehave in precise, countable ways.

The fake runs one sample at a time, like a real worker's compute thread: each takes
``behaviour.slow`` seconds of (fake) time, and its count is computed in one go when it
is due. So pings, cancels and EOF are handled at once while a sample "runs" (waits
out ``slow``), but not during the count itself: model long samples with ``slow`` and
keep ``points`` small.
"""

from __future__ import annotations

import json
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Final, Union

from mcpi_worker import kernels, protocol
from mcpi_worker.protocol import (
    MAX_FRAME,
    MAX_POINTS,
    NEED_DATA,
    Cancel,
    Error,
    ErrorCode,
    FatalProtocolError,
    Hello,
    Ping,
    Pong,
    RequestError,
    Result,
    Sample,
    Shutdown,
    Welcome,
)

FAKE_WORKER_NAME: Final[str] = "mcpi-fake-worker"

EXIT_OK: Final[int] = 0
EXIT_PROTOCOL: Final[int] = 3
"""The worker's documented exit codes: orderly end, fatal protocol error."""

GARBAGE: Final[bytes] = b"Traceback (most recent call last):\n  a stray print on stdout\n"
"""What ``garbage`` writes on stdout: text, as a stray ``print`` would. Read as a frame
header, "Trac" announces a 1.4 GB frame, which a careful reader refuses at once."""

UINT64_HALF: Final[int] = 1 << 63


@dataclass(frozen=True)
class FakeBehaviour:
    """How a fake worker behaves. The default is a correct, fast worker.

    Counting: "after N" counts sample results the fake has sent. A crash or hang
    happens when the fake is about to *start* a sample with N results sent, so the
    coordinator always has work in flight when it happens. The stream faults
    (``garbage``, ``oversize``, ``wrong_id``, ``duplicate_id``, ``eof_mid_frame``) replace
    the response of the sample that would have been result number ``misbehave_after + 1``.
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
    internal_errors: int = 0
    """Answer the first N samples with a retryable ``internal`` error instead of a result."""

    slow: float = 0.0
    """Seconds each sample takes. Samples run one at a time, in arrival order."""
    stderr_flood_mb: float = 0.0
    """Write this many MiB of text lines to stderr before the first result."""

    kernels: tuple[str, ...] = tuple(kernels.KERNELS)
    """Kernels offered in the ``welcome``; each must be one of ``mcpi_worker.kernels``."""
    max_inflight: int = 4
    """Sample requests accepted at once; more are answered ``busy``."""

    def __post_init__(self) -> None:
        unknown = set(self.kernels) - set(kernels.KERNELS)
        if unknown:
            raise ValueError(f"unknown kernels {sorted(unknown)}; known: {list(kernels.KERNELS)}")
        for name in ("crash_after", "hang_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.slow < 0 or self.stderr_flood_mb < 0 or self.misbehave_after < 0:
            raise ValueError("slow, stderr_flood_mb and misbehave_after must be >= 0")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")

    @property
    def faults(self) -> dict[str, object]:
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


Action = Union[WriteStdout, WriteStderr, FloodStderr, Exit, Hang]


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
class _Job:
    request: Sample
    ready_at: float | None = None
    """When the sample finishes; None while it waits behind another. The head of
    the queue is always running (has ``ready_at``) unless the core has finished."""


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
    then on every method returns no actions.
    """

    def __init__(self, behaviour: FakeBehaviour, pid: int, host: str | None = None) -> None:
        self.behaviour = behaviour
        self.pid = pid
        self.host = host if host is not None else socket.gethostname()
        self.stats = FakeStats()
        self.finished = False
        self._decoder = protocol.FrameDecoder(protocol.COORDINATOR_MESSAGES)
        self._handshake_done = False
        self._jobs: deque[_Job] = deque()
        self._flood_pending = behaviour.stderr_flood_mb > 0
        self._internal_errors_left = behaviour.internal_errors

    # -------------------------------------------------------------- driver interface

    def start(self) -> list[Action]:
        """Actions to perform as the process starts, before any input."""
        if self.behaviour.exit_at_start:
            return self._exit(self.behaviour.exit_code, "exiting at start as asked")
        return [WriteStderr(log_line("fake worker started", pid=self.pid, **self.behaviour.faults))]

    def receive_data(self, data: bytes, now: float) -> list[Action]:
        """Bytes arrived on stdin at time ``now``."""
        if self.finished:
            return []
        self._decoder.feed(data)
        actions: list[Action] = []
        while not self.finished:
            try:
                message = self._decoder.next_message()
            except RequestError as exc:
                actions += self._request_error(exc)
                continue
            except FatalProtocolError as exc:
                actions += self._fatal(exc.code, exc.message)
                break
            if message is NEED_DATA:
                break
            self.stats.received.append(message)
            actions += self._handle(message, now)
        return actions

    def receive_eof(self, now: float) -> list[Action]:
        """stdin ended at time ``now``: an orderly end between frames, fatal inside one."""
        if self.finished:
            return []
        try:
            self._decoder.feed_eof()
        except FatalProtocolError as exc:
            return self._fatal(exc.code, exc.message)
        return self._shut_down("stdin closed")

    @property
    def deadline(self) -> float | None:
        if self.finished or not self._jobs:
            return None
        return self._jobs[0].ready_at

    def advance(self, now: float) -> list[Action]:
        """Finish every sample due by ``now`` and start the next ones."""
        actions: list[Action] = []
        while not self.finished and self._jobs:
            job = self._jobs[0]
            assert job.ready_at is not None, "the head of the queue is always running"
            if job.ready_at > now:
                break
            self._jobs.popleft()
            actions += self._finish(job)
            if self._jobs and not self.finished:
                # The next sample starts when this one ended, not when we noticed.
                actions += self._start_job(self._jobs[0], job.ready_at)
        return actions

    # -------------------------------------------------------------------- messages

    def _handle(self, message: protocol.Message, now: float) -> list[Action]:
        if isinstance(message, Hello):
            return self._hello(message)
        if isinstance(message, Shutdown):
            return self._shut_down("shutdown requested")
        if isinstance(message, Cancel):
            return self._cancel(message.id, now)
        if not self._handshake_done:
            assert isinstance(message, (Sample, Ping))
            return self._error(message.id, ErrorCode.HANDSHAKE_REQUIRED, "send hello first")
        if any(job.request.id == message.id for job in self._jobs):
            return self._error(message.id, ErrorCode.DUPLICATE_ID, f"id {message.id} is in flight")
        if isinstance(message, Ping):
            return [WriteStdout(protocol.encode(Pong(id=message.id)))]
        assert isinstance(message, Sample)
        return self._sample(message, now)

    def _hello(self, hello: Hello) -> list[Action]:
        if self._handshake_done:
            # A hello carries no id, so the complaint cannot name a request: fatal.
            return self._fatal(ErrorCode.INVALID_REQUEST, "hello sent twice")
        version = protocol.negotiate_version(hello.versions)
        if version is None:
            return self._fatal(
                ErrorCode.UNSUPPORTED_VERSION,
                f"no common protocol version: offered {list(hello.versions)}, "
                f"this worker speaks {list(protocol.PROTOCOL_VERSIONS)}",
            )
        if self.behaviour.silent:
            return self._hang("silent: never answering hello")
        self._handshake_done = True
        welcome = Welcome(
            version=99 if self.behaviour.bad_version else version,
            worker=FAKE_WORKER_NAME,
            pid=self.pid,
            host=self.host,
            kernels=self.behaviour.kernels,
            max_inflight=self.behaviour.max_inflight,
            max_frame=MAX_FRAME,
            max_points=MAX_POINTS,
        )
        return [WriteStdout(protocol.encode(welcome))]

    def _sample(self, sample: Sample, now: float) -> list[Action]:
        if sample.kernel not in self.behaviour.kernels:
            return self._error(
                sample.id,
                ErrorCode.UNKNOWN_KERNEL,
                f"unknown kernel {sample.kernel!r}; offered: {list(self.behaviour.kernels)}",
            )
        if len(self._jobs) >= self.behaviour.max_inflight:
            return self._error(
                sample.id, ErrorCode.BUSY, f"{self.behaviour.max_inflight} requests in flight"
            )
        self._jobs.append(_Job(sample))
        if len(self._jobs) == 1:
            return self._start_job(self._jobs[0], now)
        return []

    def _cancel(self, request_id: int, now: float) -> list[Action]:
        for job in self._jobs:
            if job.request.id == request_id:
                was_running = job is self._jobs[0]
                self._jobs.remove(job)
                actions = self._error(request_id, ErrorCode.CANCELLED, "cancelled")
                if was_running and self._jobs:
                    # Invariant: the head of the queue is always running.
                    actions += self._start_job(self._jobs[0], now)
                return actions
        return []  # unknown or finished: ignored, as the protocol says

    def _start_job(self, job: _Job, now: float) -> list[Action]:
        b = self.behaviour
        if b.crash_after is not None and self.stats.results_sent >= b.crash_after:
            return self._exit(b.exit_code, f"crashing as asked (crash_after={b.crash_after})")
        if b.hang_after is not None and self.stats.results_sent >= b.hang_after:
            return self._hang(f"hanging as asked (hang_after={b.hang_after})")
        job.ready_at = now + b.slow
        return []

    def _finish(self, job: _Job) -> list[Action]:
        b = self.behaviour
        request = job.request
        actions: list[Action] = []
        if self._flood_pending:
            self._flood_pending = False
            actions.append(FloodStderr(int(b.stderr_flood_mb * (1 << 20))))
        if self._internal_errors_left > 0:
            self._internal_errors_left -= 1
            return actions + self._error(request.id, ErrorCode.INTERNAL, "fake internal error")
        count = kernels.KERNELS[request.kernel](request.seed, request.stream, request.points)
        misbehaving = self.stats.results_sent >= b.misbehave_after
        self.stats.results_sent += 1
        result_id = (request.id + UINT64_HALF) % (1 << 64) if misbehaving and b.wrong_id else request.id
        frame = protocol.encode(
            Result(id=result_id, inside=count, points=request.points, elapsed_s=b.slow)
        )
        if not misbehaving:
            return actions + [WriteStdout(frame)]
        if b.garbage:
            return actions + [WriteStderr(log_line("writing garbage as asked")), WriteStdout(GARBAGE)]
        if b.oversize:
            body = b"\xc0" * (MAX_FRAME + 1)  # msgpack nil bytes: well-formed, just too many
            return actions + [
                WriteStderr(log_line("writing an oversize frame as asked")),
                WriteStdout(protocol.HEADER.pack(len(body)) + body),
            ]
        if b.eof_mid_frame:
            actions.append(WriteStdout(frame[: len(frame) // 2]))
            return actions + self._exit(b.exit_code, "ending stdout inside a frame as asked")
        if b.duplicate_id:
            return actions + [WriteStdout(frame), WriteStdout(frame)]
        return actions + [WriteStdout(frame)]

    # ---------------------------------------------------------------------- endings

    def _shut_down(self, why: str) -> list[Action]:
        actions: list[Action] = []
        while self._jobs:
            job = self._jobs.popleft()
            actions += self._error(job.request.id, ErrorCode.CANCELLED, f"cancelled: {why}")
        return actions + [WriteStderr(log_line("fake worker exiting", reason=why)), *self._exit(EXIT_OK)]

    def _request_error(self, exc: RequestError) -> list[Action]:
        if exc.request_id is None:
            # No usable id to answer: the protocol makes an id-less error fatal.
            return self._fatal(exc.code, exc.message)
        return self._error(exc.request_id, exc.code, exc.message)

    def _error(self, request_id: int, code: ErrorCode, message: str) -> list[Action]:
        error = Error(id=request_id, code=code, message=message)
        self.stats.errors_sent.append(error)
        return [WriteStdout(protocol.encode(error))]

    def _fatal(self, code: ErrorCode, message: str) -> list[Action]:
        error = Error(id=None, code=code, message=message[: protocol.MAX_TEXT])
        self.stats.errors_sent.append(error)
        return [
            WriteStdout(protocol.encode(error)),
            WriteStderr(f"mcpi-fake-worker: fatal protocol error: {code}: {message}\n".encode()),
            *self._exit(EXIT_PROTOCOL),
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
