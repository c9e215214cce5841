"""One worker process: the Trio driver of its pipes around the sans-IO ``CoordinatorEnd``.

The protocol's rules for a coordinator (ids, the in-flight table, answer checks, the
stall deadline) live in ``mcpi_worker.protocol.coordinator_end``; this module moves
bytes and watches the process. Four tasks run concurrently (``run_pipes``), so no
pipe can fill up and deadlock the others: a stdin writer, a stdout reader, a stderr
drain, and a watcher that notices the process exiting even when something it left
behind keeps its stdout open.

Requests are sent synchronously (``send_sample``, ``send_ping``, ``cancel``). A frame is
written at once by whoever sends it when stdin is an idle OS pipe
(``pipes.write_nowait``); otherwise, or for what the pipe has no room for, it goes
through an outbox that the writer task drains with blocking writes. The writer owns
stdin while anything is in the outbox, so frames never overtake each other.

What the ``CoordinatorEnd`` reports (answers, the connection breaking) goes to one
``sink`` as a list of events: one call per read of stdout, inside a ``holding`` block,
so every request the sink starts in response goes out in one write. The connection
never retries or restarts anything itself; that is the pool's job.
"""

from __future__ import annotations

import math
import select
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import trio

from mcpi_coordinator import logs
from mcpi_coordinator.connection import pipes
from mcpi_coordinator.connection.failures import (
    describe_exit,
    exit_first,
    is_broken_pipe,
    worker_failure,
    worker_failures,
)
from mcpi_coordinator.connection.stderr_relay import StderrRelay
from mcpi_coordinator.errors import WorkerFailure
from mcpi_coordinator.launch.transport import WorkerProcess
from mcpi_worker.protocol import (
    Answered,
    Broken,
    CoordinatorEnd,
    CoordinatorEvent,
    CoordinatorState,
    Result,
    TaskBudget,
    Welcome,
    Welcomed,
)
from mcpi_worker.protocol.checked import CheckedSampleFields

RECEIVE_SIZE: Final[int] = 64 * 1024

HEAD_SIZE: Final[int] = 256
"""How much of a worker's first read of stdout is kept (``stdout_head``)."""

DRAIN_AFTER_EXIT_S: Final[float] = 1.0
"""How long, at most, the answers a worker wrote just before it exited may take to be
read, before its exit is reported as the reason it ended."""

KILL_WAIT_S: Final[float] = 10.0
"""How long ``stop`` waits for a worker's exit after SIGKILL, which ends a process at
once but one in uninterruptible sleep, or one that no signal of ours reaches."""

EventSink = Callable[["WorkerConnection", list[CoordinatorEvent]], None]
"""Receives what the ``CoordinatorEnd`` reported, synchronously; must not block or raise."""


class WorkerConnection:
    """Speaks the protocol with one ``WorkerProcess``. Run ``run_pipes()`` in a nursery.

    ``expected_points``, when given, goes in the ``hello`` as the size hint (protocol.md
    §5.1): the points this worker is expected to count, so it can load its fast kernel at
    once for a long run."""

    def __init__(
        self,
        process: WorkerProcess,
        slot: int,
        *,
        client: str,
        task_budget: TaskBudget,
        sink: EventSink,
        logger: Any = None,
        expected_points: int | None = None,
    ) -> None:
        if process.stdin is None or process.stdout is None or process.stderr is None:
            raise ValueError("a worker process needs stdin, stdout and stderr pipes")
        self.process = process
        self.slot = slot
        self.pid: int = process.pid
        """The worker process's id (read once: each answer's ``ChunkResult`` carries it)."""
        self.coordinator_end = CoordinatorEnd(client=client, task_budget=task_budget, expected_points=expected_points)
        self.welcome: Welcome | None = None
        self.failure: str | None = None
        """Why the connection broke (one line), once it has."""
        self.failure_known = trio.Event()
        """Set when the connection breaks; ``failure`` says why."""
        self.stderr_closed = trio.Event()
        self.exit_status: int | None = None
        """The process's exit status, once it has exited (reaped or not)."""
        self.exited = trio.Event()
        """Set once the process has exited and, if that broke the connection, ``failure``
        says so: what a broken pipe or closed stdout waits for (``exit_first``)."""
        self.exit_reported = False
        """Its exit is the reason the connection broke (``failure``)."""
        self.stdout_head = b""
        """The start of the worker's first read of stdout (``failures.not_frames``)."""
        self.signalled = False
        """``stop`` had to signal it: it had not exited by itself within the grace period."""
        self.answered = 0
        """Sample requests answered with a ``result`` (useful work done)."""
        self.ended = trio.Event()
        """Set by ``ended_because``: the process is reaped and ``end_reason`` final."""
        self.end_reason: str | None = None
        """The one-line account of why it ended (command, exit status, stderr tail), or
        None if it was closed on purpose; final once ``ended`` is set."""
        self._sink = sink
        self._welcomed = trio.Event()
        self._stall_clock: trio.CancelScope | None = None
        self._closing = False
        self._stdout_eof = False
        # Unbounded is safe: what goes in is bounded by the pool's lanes (at most
        # pipeline-depth requests, one cancel each, one hello, one shutdown).
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[bytes](math.inf)
        self._holding = 0
        """Depth of ``holding`` blocks: while above 0, frames wait to go out together."""
        self._held_at = 0.0
        """Trio's clock when the outermost ``holding`` block began: the time the requests
        sent in the block are charged from (one reading for a read's worth of them)."""
        self._hold = _Holding(self)
        """The ``holding`` block: one for the connection's life, its depth kept here."""
        self._queued_frames = 0
        """Writes in the outbox or being written by the writer task. Direct writes wait
        until it is 0, or a frame would overtake the ones queued before it."""
        self._stdin_fd = pipes.pipe_fd(process.stdin)
        """None for a stream that is not an OS pipe, and from the moment stdin starts
        closing: a closed descriptor's number may be reused by the next open file."""
        self._stdout_fd = pipes.pipe_fd(process.stdout)
        self._receive_stdout = (
            pipes.FdReceiver(self._stdout_fd, RECEIVE_SIZE).receive
            if self._stdout_fd is not None
            else partial(process.stdout.receive_some, RECEIVE_SIZE)
        )
        logger = logger if logger is not None else logs.get_logger("mcpi.worker")
        self._stderr = StderrRelay(logger.bind(worker=slot, pid=process.pid), name=f"worker {slot}")

    def __repr__(self) -> str:
        state = "broken" if self.failure else ("ready" if self.welcome else "starting")
        return (
            f"<WorkerConnection slot={self.slot} pid={self.process.pid} {state} "
            f"in_flight={self.in_flight} answered={self.answered}>"
        )

    # ------------------------------------------------------------------ public state

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet (pings and cancelled ones included)."""
        return self.coordinator_end.in_flight

    @property
    def jobs_shown(self) -> int:
        """The most requests the worker has been seen computing at once
        (``CoordinatorEnd.jobs_shown``)."""
        return self.coordinator_end.jobs_shown

    @property
    def usable(self) -> bool:
        """Requests may be sent: welcomed, not broken, not closing."""
        return self.coordinator_end.state is CoordinatorState.SERVING and not self._closing

    def stderr_tail(self) -> str:
        return self._stderr.tail()

    def ended_because(self, reason: str | None) -> None:
        """The owner has reaped the process: record ``reason`` (its one-line account of
        why the worker ended, None if it was closed on purpose) and wake whoever waits
        on ``ended``. Called once; never raises."""
        self.end_reason = reason
        self.ended.set()

    # ------------------------------------------------------------------ requests

    async def handshake(self) -> Welcome:
        """Send ``hello`` (already first in line) and wait for the ``welcome``; raises
        ``WorkerFailure`` if the connection breaks first."""
        self._flush()
        await self._welcomed.wait()
        if self.welcome is None:
            raise WorkerFailure(self.failure or "ended before its welcome")
        return self.welcome

    def send_sample(
        self,
        seed: int,
        stream: int,
        points: int,
        kernel: str,
        token: Any,
        *,
        streams: int = 1,
        group: int | None = None,
    ) -> int:
        """Send one ``sample`` (a range of ``streams``, counted per ``group``, needs
        version 2); its answer reaches the sink as ``Answered`` carrying ``token``. The
        connection must be ``usable``."""
        request_id = self.coordinator_end.send_sample(
            seed, stream, points, kernel, streams=streams, group=group, now=self._now(), token=token
        )
        self._sent()
        return request_id

    def send_chunk(self, chunk: CheckedSampleFields, token: Any) -> int:
        """``send_sample`` for fields checked where they were made (the pool's ``Chunk``:
        ``CoordinatorEnd.send_checked``); a range is counted stream by stream."""
        holding = self._holding
        request_id = self.coordinator_end.send_checked(
            chunk, now=self._held_at if holding else trio.current_time(), token=token
        )  # ``_now`` and ``_sent``, without their calls: this runs per request
        if not holding:
            self._move_clock()
            self._flush()
        return request_id

    def send_ping(self, token: Any) -> int:
        """Send ``ping``, the protocol's cheapest request; answered like a sample."""
        request_id = self.coordinator_end.send_ping(now=self._now(), token=token)
        self._sent()
        return request_id

    def cancel(self, request_id: int) -> None:
        """Give up on a request: send ``cancel``; its answer still comes (``abandoned``),
        and only then is the worker's room for it handed out again."""
        if self.coordinator_end.cancel(request_id) and not self._holding:
            self._flush()

    def _now(self) -> float:
        """When a request sent now is charged from: the start of the ``holding`` block it
        is sent in (a little early, so its deadline can only come sooner), else now."""
        return self._held_at if self._holding else trio.current_time()

    def _sent(self) -> None:
        if not self._holding:  # else the block's end does both, once for all it sent
            self._move_clock()
            self._flush()

    def _move_clock(self) -> None:
        """Bring the stall clock forward to the ``CoordinatorEnd``'s deadline, if that is
        sooner (``track_stalls``)."""
        clock = self._stall_clock
        if clock is not None and self.failure is None:
            due = self.coordinator_end.next_deadline()
            # Not min(): assigning the deadline re-files it with Trio even when unchanged.
            if due < clock.deadline:
                clock.deadline = due

    def holding(self) -> _Holding:
        """``with connection.holding():`` holds the frames sent in the block and writes
        them together at its end.

        The task reading stdout holds while the sink acts on one read's worth of
        answers, each of which may start the next request on this worker: one
        ``write(2)`` then carries them all. A write that wakes the worker costs more
        than encoding and sending the frame (a cross-CPU wake-up; the pool's cost per
        request is measured by ``benchmarks/overhead.py``).
        """
        return self._hold

    # ------------------------------------------------------------------ stalls and failure

    def track_stalls(self, clock: trio.CancelScope) -> None:
        """Set ``clock.deadline`` to the ``CoordinatorEnd``'s, and from now on keep it no
        later than that: the clock may ring early, never late.

        The deadline is moved synchronously, at a request or an answer, and only when
        it has to come earlier, so the task waiting in ``clock`` does not wake for
        every request (tests/pool/test_pool_hot_path.py) and the deadline is not re-filed
        with Trio twice per request either. When the clock rings the pool calls
        ``check_stall``, then this again.
        """
        self._stall_clock = clock
        clock.deadline = self.coordinator_end.next_deadline()

    def coordinator_was_away(self) -> None:
        """The stall clock rang long after its deadline: the coordinator was not running
        (``CoordinatorEnd.restart_clocks``); the requests in flight are charged from now."""
        self.coordinator_end.restart_clocks(trio.current_time())

    def check_stall(self) -> None:
        """The stall clock rang: break the connection if a request really is overdue (an
        answer in the same tick may have moved the deadline on)."""
        self._deliver(self.coordinator_end.advance(trio.current_time()))

    def fail(self, reason: str) -> None:
        """Give up on the worker: every request in flight reaches the sink as an orphan of
        ``Broken``; the first reason wins."""
        self._deliver(self.coordinator_end.fail(reason))

    def _deliver(self, events: list[CoordinatorEvent], now: float | None = None) -> None:
        """Hand ``events`` to the sink in a ``holding`` block; ``now``, when the caller has
        read Trio's clock already, is the block's start (one reading per read of stdout)."""
        if not events:
            return
        for event in events:
            if isinstance(event, Answered):
                if isinstance(event.answer, Result):
                    self.answered += 1
            elif isinstance(event, Welcomed):
                self.welcome = event.welcome
                self._welcomed.set()
            elif isinstance(event, Broken):
                self.failure = event.reason
                self._welcomed.set()
                self.failure_known.set()
        with self._hold.at(now):  # its end moves the stall clock, for the answers and the requests
            self._sink(self, events)

    # ------------------------------------------------------------------ stopping

    def begin_shutdown(self) -> None:
        """Send ``shutdown`` (if the stream is still sound) and then EOF on stdin."""
        if self._closing:
            return
        self.coordinator_end.shutdown()
        self._flush()
        self._closing = True
        self._outbox_send.close()  # the writer flushes what is queued, then closes stdin

    async def stop(self, grace: float, term_grace: float) -> int | None:
        """End the worker and reap it; return its exit status, or None if it was left
        running (below). Call it shielded.

        The escalation (protocol.md §9): ``shutdown`` and EOF on stdin, up to ``grace``
        for it to exit; SIGTERM, up to ``term_grace``; SIGKILL to its process group. A
        worker that has failed gets a short first wait (the pool's 0.1 s: it may have
        exited already) but still SIGTERM before SIGKILL, so that a launcher such as
        ``srun`` or ``ssh`` can end its remote side.
        Once it has exited, what it left in its process group (a child holding its
        pipes) is killed before it is reaped; by a local worker's ``kill``, also what it
        left elsewhere in its session while its pipes are held (``launch.local``).

        A worker that has not exited ``KILL_WAIT_S`` after SIGKILL is left running, not
        reaped, and not waited for any longer: no signal of ours reaches it (it runs as
        another user now), or none acts yet (uninterruptible sleep: a hung NFS read).
        """
        self.begin_shutdown()
        process = self.process
        with trio.move_on_after(grace) as waiting:
            await process.wait_exited()
        if waiting.cancelled_caught:
            self.signalled = True
            process.terminate()
            with trio.move_on_after(term_grace) as terminating:
                await process.wait_exited()
            if terminating.cancelled_caught:
                process.kill()
        with trio.move_on_after(KILL_WAIT_S):
            await process.wait_exited()
            process.kill()  # the group's leftovers; its id is still ours until we reap
            return await process.wait()
        return None

    # ------------------------------------------------------------------ the four tasks

    async def run_pipes(self) -> None:
        """Write stdin, read stdout, drain stderr and watch the process, concurrently,
        until the pipes end. Cancel it to stop the watcher of a process left running."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_stdin)
            nursery.start_soon(self._read_stdout)
            nursery.start_soon(self._read_stderr)
            nursery.start_soon(self._watch_exit)

    async def _write_stdin(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            with worker_failures("writing to the worker's stdin"):
                async for frame in self._outbox_receive:
                    # Coalesce whatever else is queued: one write instead of many.
                    frames = [frame]
                    while True:
                        try:
                            frames.append(self._outbox_receive.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    await stdin.send_all(b"".join(frames))
                    self._queued_frames -= len(frames)
                self._stdin_fd = None
                await stdin.aclose()
        except WorkerFailure as failure:
            if is_broken_pipe(failure.__cause__):
                await exit_first(self.exited)  # its exit says more: reported first if it came
            self.fail(str(failure))
        finally:
            self._stdin_fd = None
            await trio.aclose_forcefully(stdin)

    async def _read_stdout(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            with worker_failures("reading the worker's stdout"):
                data = await self._receive_stdout()
                self.stdout_head = bytes(data[:HEAD_SIZE])
                while data:
                    now = trio.current_time()
                    self._deliver(self.coordinator_end.receive_data(data, now), now)
                    data = await self._receive_stdout()
            self._stdout_eof = True
            if self.welcome is None:  # most often it exited: that is reported first
                await exit_first(self.exited)
            self._deliver(self.coordinator_end.receive_eof(trio.current_time()))
        except WorkerFailure as failure:
            self._stdout_eof = True
            self.fail(str(failure))
        finally:
            await trio.aclose_forcefully(stdout)

    async def _read_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        try:
            while data := await stderr.receive_some(RECEIVE_SIZE):
                self._stderr.feed(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # stderr is best effort: losing logs never fails a worker
        finally:
            self._stderr.feed_eof()
            self.stderr_closed.set()
            await trio.aclose_forcefully(stderr)

    async def _watch_exit(self) -> None:
        """Notice the process exiting even if its stdout stays open (a child it forked
        may hold it): then the exit is why the connection ends."""
        self.exit_status = await self.process.wait_exited()
        # What it wrote before it went is still in the pipe: let the reader take it.
        with trio.move_on_after(DRAIN_AFTER_EXIT_S):
            while not self._stdout_eof and self._stdout_readable():
                await trio.sleep(0)
        orderly = self.coordinator_end.state in (CoordinatorState.CLOSING, CoordinatorState.CLOSED)
        if not (orderly and self.coordinator_end.in_flight == 0):
            before = "" if self.welcome is not None else " before its handshake"
            reason = f"exited{before} ({describe_exit(self.exit_status)})"
            self.fail(reason)
            self.exit_reported = self.failure == reason  # the first reason wins
        self.exited.set()

    def _stdout_readable(self) -> bool:
        if self._stdout_fd is None:
            return False
        poller = select.poll()
        try:
            poller.register(self._stdout_fd, select.POLLIN)
        except (OSError, ValueError):
            return False  # closed meanwhile: nothing left to read
        return bool(poller.poll(0))

    # ------------------------------------------------------------------ writing

    def _flush(self) -> None:
        """Write what the ``CoordinatorEnd`` has for the worker: now if stdin is an idle
        OS pipe, else through the writer task. Synchronous either way, so a frame is
        never torn by the caller's cancellation."""
        data = self.coordinator_end.data_to_send()
        if not data or self._closing:
            return  # after shutdown, stdin is closing: nothing more goes out
        if self._queued_frames == 0 and self._stdin_fd is not None:
            try:
                written = pipes.write_nowait(self._stdin_fd, data)
            except BrokenPipeError:  # the writer task meets it too, and waits for the exit first
                self._stdin_fd, written = None, 0
            except OSError as error:  # not ``with worker_failures``: this runs per request
                self.fail(str(worker_failure(error, "writing to the worker's stdin")))
                return
            if written == len(data):
                return
            data = data[written:]  # the pipe is full: the writer waits for room
        self._outbox_send.send_nowait(data)
        self._queued_frames += 1


class _Holding:
    """The ``holding`` block (a class, not ``@contextmanager``: it runs once per read
    on the hot path, where a generator-based one costs more: ``benchmarks/overhead.py`` measures that path)."""

    __slots__ = ("_at", "_connection")

    def __init__(self, connection: WorkerConnection) -> None:
        self._connection = connection
        self._at: float | None = None

    def at(self, now: float | None) -> _Holding:
        """The block, to begin at ``now`` (Trio's clock read by the caller just before,
        so not read again) if it is the outermost one; None: read the clock."""
        self._at = now
        return self

    def __enter__(self) -> None:
        connection = self._connection
        if not connection._holding:
            at = self._at
            connection._held_at = trio.current_time() if at is None else at
        self._at = None
        connection._holding += 1

    def __exit__(self, *_exc: object) -> None:
        connection = self._connection
        connection._holding -= 1
        if connection._holding == 0:
            connection._move_clock()
            connection._flush()
