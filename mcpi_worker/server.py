"""The worker loop: a reader thread on the request fd, a compute loop, one writer lock.

Two threads share one ``_Connection`` state, guarded by one lock that also
serialises every write, so frames never interleave and every request gets exactly
one final response:

- The **reader thread** reads the request fd with ``os.read`` (never a buffered
  read, which would block waiting for a full buffer), feeds the sans-IO decoder and
  acts on each message at once: it answers ``ping`` and ``hello``, rejects bad
  requests, removes cancelled requests from the queue or flags the running one, and
  queues ``sample`` requests. Because it never waits for a long kernel, ``cancel``,
  ``ping`` and EOF are seen while a computation runs.
- The **compute loop** (``Worker.serve``, the caller's thread) takes queued samples
  one at a time and runs the kernel with a ``should_stop`` that turns true when the
  request is cancelled or the connection ends.
- **Small samples run inline.** A sample of at most ``INLINE_MAX_POINTS`` that
  arrives while nothing is running or queued is computed by the reader thread
  itself. Handing it to the compute thread would cost more than the kernel: waking
  another Python thread and winning the GIL back took 70–100 µs on a small VM, a
  0-point kernel ~10 µs (benchmarks/thread_handoff.py). Arrival order is kept (the
  queue is empty), and the reader is deaf for at most a few milliseconds.

protocol.md is the normative description of what this module does on the wire.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import structlog

from mcpi_worker import __version__
from mcpi_worker.kernels import KERNELS, Cancelled, Kernel
from mcpi_worker.protocol import (
    COORDINATOR_MESSAGES,
    MAX_FRAME,
    MAX_POINTS,
    NEED_DATA,
    PROTOCOL_VERSIONS,
    Cancel,
    Error,
    ErrorCode,
    FatalProtocolError,
    FrameDecoder,
    Hello,
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
from mcpi_worker.protocol import Message as _Message

log = structlog.get_logger("mcpi_worker")

READ_SIZE: Final[int] = 65536
"""Bytes asked of each ``os.read``: one pipe buffer's worth."""

DEFAULT_MAX_INFLIGHT: Final[int] = 64
"""Sample requests a worker accepts at once (one running, the rest queued). Queued
requests cost a few hundred bytes each; a coordinator that sends tiny chunks needs a
deep pipeline to keep the worker busy (benchmarks/overhead.py: imap_unordered of
0-point chunks ran ~1.8x faster at depth 64 than at 4). How deep it goes is the
coordinator's choice: the pool's default depth is 2."""

INLINE_MAX_POINTS: Final[int] = 1 << 16
"""The largest sample the reader thread computes itself: ~0.2 ms with the numpy
kernel, ~5 ms with the python one, so a ``ping`` or ``cancel`` read behind it waits
no longer than that (protocol.md §6)."""

DEFAULT_SPIN_S: Final[float] = 100e-6
"""How long an idle reader polls for the next request before it sleeps in ``read``.

Waking a thread asleep in ``read`` costs the writer, here the coordinator, a
cross-CPU wake-up: on a small VM that made a pipe write ~30 µs and added as much
again before the worker ran. A coordinator sending its next request within 100 µs of
an answer (a pipelined or sequential client does) finds the worker awake: a ping
through the pool took ~65 µs instead of ~130 (benchmarks/overhead.py). The price is
at most 100 µs of one core per burst of answers, and only when the worker has
nothing to compute: the reader spins only with nothing running or queued, so it
never takes the GIL from a kernel."""

HOLD_LIMIT_S: Final[float] = 0.001
"""How long a response may wait for the rest of its burst (see ``_send_locked``)."""

WORKER_NAME: Final[str] = f"mcpi-worker/{__version__}"


class ExitCode(IntEnum):
    """Process exit codes of ``mcpi-worker`` (protocol.md, "Exit codes")."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    PROTOCOL = 3


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a connection ended: the exit code, and for fatal errors the one-line reason."""

    exit_code: ExitCode
    reason: str


@dataclass(slots=True)
class _Job:
    request: Sample
    stopped: bool = False
    """Set to stop the kernel: the job was cancelled or the connection is ending. A
    plain flag, read by the kernel between blocks: assigning a bool is atomic, and a
    ``threading.Event`` per request cost more than a 0-point kernel's bookkeeping."""

    def should_stop(self) -> bool:
        return self.stopped


class Worker:
    """Serves one connection over a pair of file descriptors.

    ``on_sample`` is a test seam: called on the thread about to run a kernel (the
    compute thread, or the reader for a small sample) before it does (the CLI uses it
    for ``--test-stray-output``). ``hold_limit_s`` bounds how
    long a response waits for the rest of its burst (``HOLD_LIMIT_S``); ``spin_s`` how
    long an idle reader polls before it sleeps (``DEFAULT_SPIN_S``; 0: never).
    """

    def __init__(
        self,
        input_fd: int,
        output_fd: int,
        *,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        kernels: Mapping[str, Kernel] = KERNELS,
        on_sample: Callable[[Sample], None] | None = None,
        hold_limit_s: float = HOLD_LIMIT_S,
        spin_s: float = DEFAULT_SPIN_S,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self._input_fd = input_fd
        self._output_fd = output_fd
        self._max_inflight = max_inflight
        self._kernels = kernels
        self._on_sample = on_sample
        self._hold_limit_s = hold_limit_s
        self._spin_s = spin_s
        self._decoder = FrameDecoder(COORDINATOR_MESSAGES)

        # Everything below is guarded by _lock; writes to output_fd happen under it too.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._handshaken = False
        self._queue: deque[_Job] = deque()
        self._running: _Job | None = None
        self._closing_reason: str | None = None  # set on EOF, shutdown or lost output
        self._fatal: FatalProtocolError | None = None
        self._output_closed = False
        self._holding = False  # the reader is acting on a burst of frames
        self._held: list[bytes] = []
        self._held_since = 0.0

    # ------------------------------------------------------------------ compute loop

    def serve(self) -> Outcome:
        """Run the connection to its end on the calling thread; return how it ended."""
        reader = threading.Thread(target=self._read_loop, name="mcpi-reader", daemon=True)
        reader.start()
        while (job := self._next_job()) is not None:
            self._run_and_answer(job)
        with self._lock:
            if self._fatal is not None:
                crashed = self._fatal.code == ErrorCode.INTERNAL  # our bug, not the peer's
                return Outcome(
                    ExitCode.INTERNAL if crashed else ExitCode.PROTOCOL,
                    f"fatal protocol error: {self._fatal.code}: {self._fatal.message}",
                )
            reason = self._closing_reason or "closed"
        log.info("worker_exiting", reason=reason)
        return Outcome(ExitCode.OK, reason)

    def _next_job(self) -> _Job | None:
        """The next queued sample, or None once the connection is over and drained."""
        with self._lock:
            while True:
                if self._fatal is not None:
                    return None
                if self._queue:
                    self._running = self._queue.popleft()
                    return self._running
                if self._closing_reason is not None:
                    return None
                self._wake.wait()

    def _run_and_answer(self, job: _Job) -> None:
        """Compute ``job`` (already ``_running``) and send its one final response."""
        response = self._run(job)
        with self._lock:
            self._running = None
            self._send_locked(response)

    def _run(self, job: _Job) -> Result | Error:
        request = job.request
        if self._on_sample is not None:
            self._on_sample(request)
        kernel = self._kernels[request.kernel]  # checked when the request was queued
        started = time.perf_counter()
        try:
            inside = kernel(request.seed, request.stream, request.points, job.should_stop)
        except Cancelled:
            log.debug("sample_cancelled", id=request.id)
            return Error(request.id, ErrorCode.CANCELLED, "cancelled before it finished")
        except Exception as exc:  # a kernel bug must fail one request, not the worker
            log.exception("kernel_failed", id=request.id, kernel=request.kernel)
            return Error(request.id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        log.debug("sample_done", id=request.id, points=request.points, elapsed_s=elapsed)
        return Result(request.id, inside, request.points, elapsed)

    # ------------------------------------------------------------------ reader thread

    def _read_loop(self) -> None:
        try:
            poller = select.poll()
            poller.register(self._input_fd, select.POLLIN)
            while True:
                self._spin_until_readable(poller)
                try:
                    data = os.read(self._input_fd, READ_SIZE)
                except OSError as exc:
                    self._close(f"request stream failed: {exc}")
                    return
                if not data:
                    self._decoder.feed_eof()  # raises if the stream ended mid-frame
                    self._close("end of input")
                    return
                self._decoder.feed(data)
                if not self._handle_buffered() or self._closing_reason is not None:
                    return  # shutdown, or nobody reads our responses any more
        except FatalProtocolError as exc:
            self._fail(exc)
        except BaseException as exc:  # never let the reader die silently
            log.exception("reader_crashed")
            self._fail(FatalProtocolError(ErrorCode.INTERNAL, f"reader crashed: {exc!r}"))

    def _spin_until_readable(self, poller: select.poll) -> None:
        """While idle, poll the request fd for up to ``spin_s`` before blocking in read
        (``DEFAULT_SPIN_S`` says why). Only this thread queues work, so the worker
        stays idle for the whole spin."""
        if self._spin_s <= 0:
            return
        with self._lock:
            idle = self._running is None and not self._queue
        if not idle:
            return
        deadline = time.perf_counter() + self._spin_s
        while not poller.poll(0) and time.perf_counter() < deadline:
            pass

    def _handle_buffered(self) -> bool:
        """Act on every complete frame buffered; False once reading should stop.

        Responses written meanwhile are held and go out together at the end, in one
        write: a coordinator that pipelines sends requests in bursts, and each
        write that wakes it costs it more than reading one more frame.
        """
        with self._lock:
            self._holding = True
        try:
            return self._handle_frames()
        finally:
            with self._lock:
                self._holding = False
                self._flush_locked()

    def _handle_frames(self) -> bool:
        while True:
            try:
                message = self._decoder.next_message()
            except RequestError as exc:
                if exc.request_id is None:
                    # Nobody can be told which request was bad: the stream is untrustworthy.
                    raise FatalProtocolError(exc.code, exc.message) from None
                log.info("request_rejected", id=exc.request_id, code=exc.code, why=exc.message)
                self._send(Error(exc.request_id, exc.code, exc.message))
                continue
            if message is NEED_DATA:
                return True
            if not self._handle(message):
                return False

    def _handle(self, message: _Message) -> bool:
        match message:
            case Hello():
                self._handle_hello(message)
            case Ping(id=request_id):
                with self._lock:
                    refusal = self._refusal_locked(request_id)
                    self._send_locked(refusal or Pong(request_id))
            case Sample():
                self._handle_sample(message)
            case Cancel(id=request_id):
                self._cancel(request_id)
            case Shutdown():
                self._close("shutdown requested")
                return False
        return True

    def _handle_hello(self, hello: Hello) -> None:
        with self._lock:
            if self._handshaken:
                raise FatalProtocolError(ErrorCode.INVALID_REQUEST, "a second hello")
            version = negotiate_version(hello.versions)
            if version is None:
                raise FatalProtocolError(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"no common protocol version: coordinator speaks {list(hello.versions)}, "
                    f"this worker speaks {list(PROTOCOL_VERSIONS)}",
                )
            self._handshaken = True
            self._send_locked(
                Welcome(
                    version=version,
                    worker=WORKER_NAME,
                    pid=os.getpid(),
                    host=socket.gethostname(),
                    kernels=tuple(self._kernels),
                    max_inflight=self._max_inflight,
                    max_frame=MAX_FRAME,
                    max_points=MAX_POINTS,
                )
            )
        log.info("handshake", client=hello.client, version=version)

    def _handle_sample(self, request: Sample) -> None:
        with self._lock:
            if self._closing_reason is not None:
                # Only reachable when the response stream broke: drop it, like the rest.
                return
            refusal = self._refusal_locked(request.id)
            if refusal is None and request.kernel not in self._kernels:
                refusal = Error(
                    request.id,
                    ErrorCode.UNKNOWN_KERNEL,
                    f"unknown kernel {request.kernel!r}; this worker offers "
                    f"{', '.join(self._kernels)}",
                )
            if refusal is None and self._outstanding_locked() >= self._max_inflight:
                refusal = Error(
                    request.id,
                    ErrorCode.BUSY,
                    f"{self._max_inflight} sample requests already outstanding",
                )
            if refusal is not None:
                self._send_locked(refusal)
                return
            job = _Job(request)
            inline = (
                request.points <= INLINE_MAX_POINTS and self._running is None and not self._queue
            )
            if inline:
                self._running = job  # outstanding, so a duplicate id is still refused
            else:
                self._queue.append(job)
                self._wake.notify()
        if inline:
            self._run_and_answer(job)
        else:
            log.debug("sample_queued", id=request.id, points=request.points, kernel=request.kernel)

    def _refusal_locked(self, request_id: int) -> Error | None:
        """The error answering a request that cannot be served in this state, if any."""
        if not self._handshaken:
            return Error(request_id, ErrorCode.HANDSHAKE_REQUIRED, "send hello first")
        if self._is_outstanding_locked(request_id):
            return Error(
                request_id, ErrorCode.DUPLICATE_ID, f"id {request_id} is already outstanding"
            )
        return None

    def _cancel(self, request_id: int) -> None:
        with self._lock:
            if self._running is not None and self._running.request.id == request_id:
                # The compute loop sends the one final response: "cancelled" if the
                # kernel sees the flag, the result if it finished first.
                self._running.stopped = True
                return
            for job in self._queue:
                if job.request.id == request_id:
                    self._queue.remove(job)
                    self._send_locked(
                        Error(request_id, ErrorCode.CANCELLED, "cancelled before it started")
                    )
                    return
        # Unknown or already answered: cancel is idempotent, nothing to do.

    # ------------------------------------------------------------------ endings

    def _close(self, reason: str) -> None:
        """Orderly end: answer every queued request ``cancelled``, stop the running one."""
        with self._lock:
            if self._closing_reason is None:
                self._closing_reason = reason
            self._abandon_locked(answer=True)
        log.info("closing", reason=reason)

    def _fail(self, error: FatalProtocolError) -> None:
        """Fatal end: one ``error`` frame with a nil id, then nothing more is written."""
        with self._lock:
            if self._fatal is not None:
                return
            self._send_locked(Error(None, error.code, error.message))
            self._fatal = error
            self._abandon_locked(answer=False)

    def _abandon_locked(self, *, answer: bool) -> None:
        while self._queue:
            job = self._queue.popleft()
            if answer:
                self._send_locked(
                    Error(job.request.id, ErrorCode.CANCELLED, "worker is shutting down")
                )
        if self._running is not None:
            self._running.stopped = True
        self._wake.notify_all()

    # ------------------------------------------------------------------ bookkeeping

    def _outstanding_locked(self) -> int:
        return len(self._queue) + (self._running is not None)

    def _is_outstanding_locked(self, request_id: int) -> bool:
        if self._running is not None and self._running.request.id == request_id:
            return True
        return any(job.request.id == request_id for job in self._queue)

    # ------------------------------------------------------------------ writing

    def _send(self, message: Error | Pong | Welcome | Result) -> None:
        with self._lock:
            self._send_locked(message)

    def _send_locked(self, message: Error | Pong | Welcome | Result) -> None:
        """Write one whole frame, or hold it while the reader acts on a burst (for at
        most ``hold_limit_s``). Nothing is written after a fatal error or EPIPE."""
        if self._fatal is not None or self._output_closed:
            return
        frame = encode(message)
        if not self._holding:
            self._write_locked(frame)
            return
        now = time.monotonic()
        if not self._held:
            self._held_since = now
        self._held.append(frame)
        if now - self._held_since > self._hold_limit_s:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._held:
            frames = b"".join(self._held)
            self._held.clear()
            self._write_locked(frames)

    def _write_locked(self, data: bytes) -> None:
        if self._output_closed:
            return
        frame = memoryview(data)
        try:
            while frame:
                written = os.write(self._output_fd, frame)
                frame = frame[written:]
        except (BrokenPipeError, ConnectionResetError):
            # Nobody is reading our responses: the coordinator is gone. End quietly.
            self._output_closed = True
            if self._closing_reason is None:
                self._closing_reason = "response stream closed by the coordinator"
            self._abandon_locked(answer=False)

