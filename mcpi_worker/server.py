"""The worker process's driver: threads and file descriptors around the sans-IO ``WorkerEnd``.

The protocol's rules live in ``mcpi_worker.protocol.worker_end``; this module only
moves bytes and runs kernels. One lock guards the ``WorkerEnd`` and every write, so
frames never interleave and nothing is written after the connection ends.

- The **reader thread** reads the request fd with ``os.read`` (never a buffered read,
  which would block waiting for a full buffer) and feeds the ``WorkerEnd``, which
  answers ``hello``, ``ping`` and bad requests itself and says which samples to start
  or stop. Because it never waits for a long kernel, ``cancel``, ``ping`` and EOF are
  seen while a computation runs. The responses to one read go out in one write.
- The **compute threads** (``jobs`` of them: ``serve``'s own thread and ``jobs - 1``
  more) run the samples the ``WorkerEnd`` starts, with a ``should_stop`` that turns
  true when the request is cancelled or the connection ends.
- **Small samples run on the reader.** A sample whose work (``Sample.work``: its points
  and each stream's set-up) is at most ``INLINE_MAX_WORK`` is computed by the reader
  thread itself: handing it to a compute thread would cost more than the kernel
  (waking another Python thread and winning the GIL back costs more than a 0-point
  kernel: benchmarks/thread_handoff.py). Before each one the reader reads and acts on
  the input waiting, so a ``ping`` is answered and a ``cancel`` or EOF seen behind at
  most one small sample, and a pipelined stream of small samples never crosses to
  another thread. Work, not points: a range of 65,536 one-point streams is mostly
  set-up, and on the reader it would keep a ``ping`` waiting as long as a large sample.
  A sample of no points runs on the reader whatever its streams: it runs no kernel and
  seeds no generator (``count_groups``: its counts are zeros, one per group, at most
  ``MAX_GROUPS``), so it takes microseconds, less than the hand-off it would cost. It is
  answered right where the read that brought it is acted on, under the same hold of the
  lock (``Worker._answer_empty``), not put aside for ``_run_inline`` as a job: a stop
  could not change its answer anyway, and the job cost three more holds of the lock and
  its bookkeeping per sample (tests/worker/test_worker_inline.py counts the holds).

protocol.md is the normative description of what this module does on the wire.
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Final

from mcpi_worker import __version__
from mcpi_worker.kernels import KERNELS, Cancelled, Kernel
from mcpi_worker.logs import LOG_LEVELS, get_logger
from mcpi_worker.protocol import (
    STREAM_COST_POINTS,
    ConnectionEnded,
    ErrorCode,
    ExitCode,
    Sample,
    StartSample,
    StopSample,
    WorkerEnd,
    WorkerEvent,
    WorkerOffer,
    WorkerState,
    bounded_text,
)
from mcpi_worker.sampling import count_groups
from mcpi_worker.spare_cpu import SpareCpu

log = get_logger("mcpi_worker")

__all__ = [
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_SPIN_S",
    "HOLD_LIMIT_S",
    "INLINE_MAX_POINTS",
    "INLINE_MAX_WORK",
    "WORKER_NAME",
    "ConnectionEnded",
    "ExitCode",
    "Worker",
]

READ_SIZE: Final[int] = 65536
"""Bytes asked of each ``os.read``: one pipe buffer's worth."""

DEFAULT_MAX_INFLIGHT: Final[int] = 64
"""Sample requests a worker accepts at once (running and queued). Queued requests cost
a few hundred bytes each; a coordinator that sends tiny chunks needs a deep pipeline to
keep the worker busy (``mcpi estimate --pipeline-depth``; docs/estimate.md shows what
depth does to a run of small chunks). How deep it goes is the coordinator's choice: the
pool's default depth is 2."""

INLINE_MAX_POINTS: Final[int] = 1 << 16
"""The largest plain sample the reader thread computes itself (``INLINE_MAX_WORK``)."""

INLINE_MAX_WORK: Final[int] = INLINE_MAX_POINTS + STREAM_COST_POINTS
"""The most work (``Sample.work``) the reader thread computes itself: a plain sample of
65,536 points (what that takes each kernel: ``python benchmarks/kernel.py``), or a range
of a few short streams, so a ``ping`` or ``cancel`` read behind it waits no longer than
that (protocol.md §6)."""

DEFAULT_SPIN_S: Final[float] = 100e-6
"""How long an idle reader polls for the next request before it sleeps in ``read``,
while the machine has a CPU to spare (``spare_cpu``, which says why only then).

Waking a thread asleep in ``read`` costs the writer, here the coordinator, a
cross-CPU wake-up, paid on the pipe write and again before the worker runs. A
coordinator sending its next request within this time of an answer (a pipelined or
sequential client does) finds the worker awake, and a ping through the pool returns
sooner (``python benchmarks/overhead.py`` measures it; docs/bench.md has the figures).
The price is at most this long on one core per burst of answers, and only when the
worker has nothing to compute: the reader spins only with nothing running or queued,
so it never takes the GIL from a kernel."""

HOLD_LIMIT_S: Final[float] = 0.001
"""How long the results of a run of small samples may wait to go out together."""

WORKER_NAME: Final[str] = f"mcpi-worker/{__version__}"


def _logs_debug() -> bool:
    """Whether this process's logging lets a debug line through now (True for a
    structlog logger that cannot say)."""
    return log.is_enabled_for(LOG_LEVELS["debug"])


class _Job:
    """One started sample and its stop flag."""

    __slots__ = ("request", "stopped")

    def __init__(self, request: Sample) -> None:
        self.request = request
        self.stopped = False
        """Set to stop the kernel: the job was cancelled or the connection is ending. A
        plain flag, read by the kernel between blocks: assigning a bool is atomic, and a
        ``threading.Event`` per request cost more than a 0-point kernel's bookkeeping."""

    def should_stop(self) -> bool:
        return self.stopped


_STOP: Final = None
"""Put on the work queue once per compute thread when the connection has ended."""


class Worker:
    """Serves one connection over a pair of file descriptors.

    ``jobs`` samples run at once, each on a compute thread (a kernel that releases the
    GIL runs them in parallel). ``implementations`` says which implementation runs each
    kernel now (``kernels.kernel_implementations``), for each result and, read when the
    ``hello`` comes, for the welcome; ``welcome_implementations``, when given, is read for
    the welcome instead (``kernels.welcome_implementations``: what counts the next big
    sample, a load under way included).
    ``on_sample`` is a test seam: called on the thread about to run a kernel, before it
    does (the CLI uses it for ``--test-stray-output``). ``hold_limit_s`` bounds how long results wait to go out
    together (``HOLD_LIMIT_S``); ``spin_s`` how long an idle reader polls before it
    sleeps (``DEFAULT_SPIN_S``; 0: never), and ``spare_cpu`` whether it may now (default
    ``spare_cpu.SpareCpu()``: while some CPU of the machine is idle). ``expect`` receives the ``hello``'s size hint
    (protocol.md §5.1), when it carries one, on the reader thread before any sample
    starts (``NumpyKernel.expect``: it must return at once). ``lock`` is a test seam: the
    lock that guards the ``WorkerEnd`` and every write (default a ``threading.Lock``), so a
    test can hold a thread back between two holds and force an interleaving.
    """

    def __init__(
        self,
        input_fd: int,
        output_fd: int,
        *,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        jobs: int = 1,
        kernels: Mapping[str, Kernel] = KERNELS,
        on_sample: Callable[[Sample], None] | None = None,
        hold_limit_s: float = HOLD_LIMIT_S,
        spin_s: float = DEFAULT_SPIN_S,
        spare_cpu: Callable[[], bool] | None = None,
        implementations: Callable[[], Mapping[str, str]] | None = None,
        welcome_implementations: Callable[[], Mapping[str, str]] | None = None,
        expect: Callable[[int], None] | None = None,
        lock: AbstractContextManager[object] | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self._implementations = implementations
        self._welcome_implementations = welcome_implementations or implementations
        self._expect = expect
        self._input_fd = input_fd
        self._output_fd = output_fd
        self._kernels = kernels
        self._on_sample = on_sample
        self._hold_limit_s = hold_limit_s
        self._spin_s = spin_s
        self._spare_cpu = spare_cpu if spare_cpu is not None else SpareCpu()
        self._jobs = jobs
        offer = WorkerOffer(
            worker=WORKER_NAME,
            pid=os.getpid(),
            host=os.uname().nodename,  # gethostname() on Linux, without importing socket
            kernels=tuple(kernels),
            max_inflight=max_inflight,
        )
        # Everything below is guarded by _lock; writes to output_fd happen under it too.
        self._lock = lock if lock is not None else threading.Lock()
        self._worker_end = WorkerEnd(offer, jobs=jobs)
        self._running: dict[int, _Job] = {}
        self._inline: _Job | None = None
        """A small sample started by what the reader read (or by the end of the one it
        ran), for the reader to run."""
        self._greeted = False
        self._held_since: float | None = None
        self._work: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._log_samples = _logs_debug()
        """Each sample's end is logged (``sample_done``): the level allows it. Asked once,
        when the worker is made (after the entry point has configured logging): on the
        path of every sample, a call filtered out still cost a look-up through
        structlog's lazy proxy and a dict of its arguments (``benchmarks/request_cpu.py``
        measures the workers' CPU per request)."""

    # ------------------------------------------------------------------ compute threads

    def serve(self) -> ConnectionEnded:
        """Run the connection to its end on the calling thread; return how it ended (the
        ``WorkerEnd``'s last event: the exit code, and a one-line reason)."""
        reader = threading.Thread(target=self._read_loop, name="mcpi-reader", daemon=True)
        reader.start()
        for index in range(1, self._jobs):
            threading.Thread(
                target=self._compute_loop, name=f"mcpi-compute-{index}", daemon=True
            ).start()
        self._compute_loop()
        with self._lock:
            # The stop came from a thread still holding the lock, about to write the
            # last frames (a fatal error, say): let it finish before we return. And write
            # what is still held: the reader ends the connection with the last small
            # sample's answer held (``_run_inline`` writes it at its next hold), and once
            # we return the process exits and the reader thread dies with it.
            self._flush_locked()
            ended = self._worker_end.end
        assert ended is not None, "compute threads stop only once the connection has ended"
        log.info("worker_exiting", reason=ended.reason, exit_code=int(ended.exit_code))
        return ended

    def _compute_loop(self) -> None:
        while (job := self._work.get()) is not _STOP:
            report = self._compute(job)
            with self._lock:
                self._act(report(), on_reader=False)
                self._flush_locked()

    def _compute(self, job: _Job) -> Callable[[], list[WorkerEvent]]:
        """Run ``job``'s kernel (without the lock); return how to report its end to the
        ``WorkerEnd``, to be called with the lock held, and acted on under the same
        hold: a sample it starts must be known before anything can stop it."""
        request = job.request
        if self._on_sample is not None:
            self._on_sample(request)
        kernel = self._kernels[request.kernel]  # the WorkerEnd accepts offered kernels only
        started = time.perf_counter()
        try:
            insides = count_groups(kernel, request, job.should_stop)
        except Cancelled:
            log.debug("sample_cancelled", id=request.id)
            why = "cancelled before it finished"
            return lambda: self._report_failure(request.id, ErrorCode.CANCELLED, why)
        except Exception as exc:  # a kernel bug must fail one request, not the worker
            log.exception("kernel_failed", id=request.id, kernel=request.kernel)
            why = f"{type(exc).__name__}: {exc}"
            return lambda: self._report_failure(request.id, ErrorCode.INTERNAL, why)
        elapsed = time.perf_counter() - started
        if (waited := getattr(kernel, "take_waited_s", None)) is not None:
            elapsed = max(0.0, elapsed - waited())  # waiting for a load is not kernel time
        if self._log_samples:
            log.debug("sample_done", id=request.id, points=request.total_points, elapsed_s=elapsed)

        # Read after the sample: under MCPI_NUMPY_IMPL=auto the numpy kernel switches
        # from NumPy to the fused loop once, and a sample may end on the new one.
        implementation = self._implementations().get(request.kernel, "") if self._implementations else ""

        def report() -> list[WorkerEvent]:
            del self._running[request.id]
            return self._worker_end.sample_finished(request.id, insides, elapsed, implementation)

        return report

    def _answer_empty(self, request: Sample, implementations: Mapping[str, str]) -> list[WorkerEvent]:
        """Count a sample of no points now, on the reader with the lock held, and report it
        to the ``WorkerEnd``; return what that starts. Its counts are ``count_groups``'
        (zeros: no kernel runs, no generator is seeded), so it ends in microseconds and
        nothing can stop it first: a ``cancel`` behind it finds it answered, as it would
        have found a job of no points (whose kernel never looks at its stop flag).
        ``implementations``: each kernel's implementation now (``_act`` reads them once
        for the samples of no points it answers together: none of them runs a kernel)."""
        if self._on_sample is not None:
            self._on_sample(request)
        started = time.perf_counter()
        insides = count_groups(self._kernels[request.kernel], request)  # the WorkerEnd accepts offered kernels only
        elapsed = time.perf_counter() - started
        if self._log_samples:
            log.debug("sample_done", id=request.id, points=0, elapsed_s=elapsed)
        return self._worker_end.sample_finished(request.id, insides, elapsed, implementations.get(request.kernel, ""))

    def _report_failure(self, request_id: int, code: ErrorCode, message: str) -> list[WorkerEvent]:
        del self._running[request_id]
        return self._worker_end.sample_failed(request_id, code, bounded_text(message))

    # ------------------------------------------------------------------ the reader thread

    def _read_loop(self) -> None:
        try:
            poller = select.poll()
            poller.register(self._input_fd, select.POLLIN)
            while self._reading():
                self._spin_until_readable(poller)
                self._receive()
                # Only this thread makes ``_inline`` a job, so a look without the lock is
                # safe: a job the connection's end took meanwhile is found gone under it.
                if self._inline is not None:
                    self._run_inline(poller)
        except BaseException as exc:  # never let the reader die silently
            log.exception("reader_crashed")
            with self._lock:
                self._act(self._worker_end.fail_internal(f"reader crashed: {exc!r}"), on_reader=False)
                self._flush_locked()

    def _receive(self) -> None:
        """One read of the request fd (blocking if nothing waits), fed to the ``WorkerEnd``
        and acted on; its answers (and any held results) go out in one write."""
        try:
            data = os.read(self._input_fd, READ_SIZE)
        except OSError as exc:
            log.warning("request_stream_failed", error=str(exc))
            data = b""
        greeting = None
        with self._lock:
            if self._welcome_implementations is not None and self._worker_end.state is WorkerState.AWAIT_HELLO:
                # Read now, not when the worker was made: a worker started before its
                # coordinator was ready (launch/early.py) loads its kernels meanwhile.
                self._worker_end.offer_implementations(self._offered(self._welcome_implementations()))
            events = self._worker_end.receive_data(data) if data else self._worker_end.receive_eof()
            hello, welcome = self._worker_end.hello, self._worker_end.welcome
            if not self._greeted and hello is not None and welcome is not None:
                self._greeted, greeting = True, (hello, welcome)
                if hello.expected_points is not None and self._expect is not None:
                    self._flush_locked()  # the welcome goes out first
                    self._expect(hello.expected_points)  # before the samples read with it start
            self._act(events, on_reader=True)
            self._flush_locked()
        if greeting is not None:
            hello, welcome = greeting
            log.info(
                "handshake", client=hello.client, version=welcome.version,
                expected_points=hello.expected_points,
            )  # fmt: skip

    def _offered(self, running: Mapping[str, str]) -> tuple[str, ...]:
        """``running`` as a welcome's ``implementations``: one per kernel offered, in order
        (none when it says nothing)."""
        return tuple(running.get(name, "") for name in self._kernels) if running else ()

    def _reading(self) -> bool:
        with self._lock:
            return self._worker_end.state in (WorkerState.AWAIT_HELLO, WorkerState.SERVING)

    def _spin_until_readable(self, poller: select.poll) -> None:
        """While idle, poll the request fd for up to ``spin_s`` before blocking in read
        (``DEFAULT_SPIN_S`` says why), unless every CPU is taken (``spare_cpu``). Only this
        thread reads input, so the worker stays idle for the whole spin."""
        if self._spin_s <= 0:
            return
        with self._lock:
            idle = self._worker_end.idle
        if not idle or not self._spare_cpu():
            return
        deadline = time.perf_counter() + self._spin_s
        while not poller.poll(0) and time.perf_counter() < deadline:
            pass

    def _run_inline(self, poller: select.poll) -> None:
        """Run the small samples the reads start, one by one, on this thread. Before each,
        input waiting is read and acted on first (one read, ``READ_SIZE`` bytes: a flood
        of input cannot keep the sample from ever running), so a ``ping``, ``cancel`` or
        EOF waits behind at most one small sample. A sample that read stops is still run
        (its kernel sees the flag and answers ``cancelled``, unless it has no points to
        count); one the connection's end takes away (``_act``: ``ConnectionEnded``) goes
        to the compute threads."""
        while True:
            # Input first, then the sample: what that read stops or ends, the sample sees
            # (one look under the lock for both: a 0-point sample costs less than a
            # second one). After the last sample this polls once more, for nothing.
            if poller.poll(0) and self._reading():
                self._receive()
            with self._lock:
                job = self._inline
                if job is None:  # none left, or the connection ended: the compute threads have it
                    self._flush_locked()
                    return
                self._inline = None  # taken: only this thread runs it now
            report = self._compute(job)
            with self._lock:
                self._act(report(), on_reader=True)
                if self._held_since is None:
                    self._held_since = time.monotonic()
                elif time.monotonic() - self._held_since > self._hold_limit_s:
                    self._flush_locked()

    # ------------------------------------------------------------------ acting on events

    def _act(self, events: list[WorkerEvent], *, on_reader: bool) -> None:
        """Carry out the ``WorkerEnd``'s events (the lock is held). On the reader, a sample
        of no points is answered here (``_answer_empty``), and what its answer starts (the
        next one queued) is carried out after the events before it."""
        pending = deque(events)
        implementations: Mapping[str, str] | None = None
        while pending:
            event = pending.popleft()
            if isinstance(event, StartSample):
                request = event.request
                if on_reader and request.points == 0:
                    if implementations is None:
                        implementations = self._implementations() if self._implementations else {}
                    pending.extend(self._answer_empty(request, implementations))
                    continue
                job = _Job(request)
                self._running[request.id] = job
                if on_reader and request.work <= INLINE_MAX_WORK and self._inline is None:
                    self._inline = job
                else:
                    self._work.put(job)
            elif isinstance(event, StopSample):
                stopping = self._running.get(event.request_id)
                if stopping is not None:
                    stopping.stopped = True
            elif isinstance(event, ConnectionEnded):
                log.info("closing", reason=event.reason)
                if self._inline is not None:  # started, but it will never be run now
                    self._inline.stopped = True
                    self._work.put(self._inline)
                    self._inline = None
                for _ in range(self._jobs):
                    self._work.put(_STOP)

    def _flush_locked(self) -> None:
        self._held_since = None
        data = self._worker_end.data_to_send()
        if not data:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._output_fd, view) :]
        except OSError:  # EPIPE, mostly: nobody reads our responses any more
            self._act(self._worker_end.output_lost(), on_reader=False)
