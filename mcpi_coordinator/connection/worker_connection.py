"""One worker process: its three pipes, the protocol state, and the requests in flight.

A ``WorkerConnection`` is the async shell around the sans-IO core in
``mcpi_worker.protocol``: frames go to stdin, one task reads stdout into a
``FrameDecoder`` and matches responses to requests by id, one drains stderr. The
reading tasks run concurrently with every write (``run_pipes``), so no pipe can fill
up and deadlock the others.

Requests are sent synchronously (``submit``, ``send_ping``) and their one final
answer comes back through a callback, ``on_answer``: the connection knows nothing of
who waits for it (``mcpi_coordinator.pool.dispatch``). A frame is written at once by
whoever sends it when stdin is an idle OS pipe (``pipes.write_nowait``); otherwise, or
for what the pipe has no room for, it goes through an outbox that a writer task
drains with blocking writes. The writer owns stdin while anything is in the outbox,
so frames never overtake each other.

Anything that goes wrong on this connection (EOF, a broken pipe, a protocol
violation, a fatal ``error`` from the worker, a stall noticed by the pool) ends up in
``fail()``: the first reason is kept, every request still waiting gets a
``WorkerFailure`` as its answer, and ``broken`` is set. The connection never retries or restarts
anything itself; that is the pool's job (``mcpi_coordinator.pool.worker_pool``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import structlog
import trio

from mcpi_coordinator.connection import pipes
from mcpi_coordinator.connection.stderr_relay import StderrRelay
from mcpi_coordinator.errors import WorkerFailure, worker_failure, worker_failures
from mcpi_coordinator.launch.transport import WorkerProcess
from mcpi_worker import protocol
from mcpi_worker.protocol import (
    NEED_DATA,
    PROTOCOL_VERSIONS,
    WORKER_MESSAGES,
    Cancel,
    CoordinatorMessage,
    Error,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    Result,
    Sample,
    Shutdown,
    Welcome,
    WorkerMessage,
)

RECEIVE_SIZE: Final[int] = 64 * 1024


Answer = Result | Pong | Error | WorkerFailure
"""The one final outcome of a request: the worker's ``result`` (to a sample), ``pong``
(to a ping) or ``error``, or the failure of the connection before it answered."""

OnAnswer = Callable[[Answer], None]


@dataclass(eq=False, slots=True)
class _Request:
    """A request the worker has not answered yet."""

    points: int
    sent_at: float
    on_answer: OnAnswer | None
    """Called once with the final answer; None once the caller abandoned the request
    (a ``cancel`` was sent, and the answer is dropped when it comes)."""
    ping: bool = False
    """A ``ping``, answered by ``pong``; otherwise a ``sample``, answered by ``result``."""


class WorkerConnection:
    """Speaks the protocol with one ``WorkerProcess``. Run ``run_pipes()`` in a nursery.

    ``on_capacity(self)`` is called each time the worker gives a final answer to a
    request, i.e. each time it has room for one more. The pool hands out "lanes"
    that way, which is what makes work pulled rather than pushed.
    """

    def __init__(
        self,
        process: WorkerProcess,
        slot: int,
        *,
        on_capacity: Callable[[WorkerConnection], None],
        logger: Any = None,
    ) -> None:
        if process.stdin is None or process.stdout is None or process.stderr is None:
            raise ValueError("a worker process needs stdin, stdout and stderr pipes")
        self.process = process
        self.slot = slot
        self.welcome: Welcome | None = None
        self.failure: WorkerFailure | None = None
        self.broken = trio.Event()
        self.stderr_closed = trio.Event()
        self.answered = 0
        """Sample requests answered with a ``result`` (useful work done)."""
        self.ended = trio.Event()
        self.end_reason: str | None = None
        """Set by the owner once the process is reaped: the one-line account of why it
        ended (command, exit status, stderr tail), or None if it was closed on purpose."""
        self._on_capacity = on_capacity
        self._decoder = FrameDecoder(WORKER_MESSAGES)
        self._ids = itertools.count(1)  # ids are never reused on a connection
        self._requests: dict[int, _Request] = {}  # insertion order = send order
        self._welcomed = trio.Event()
        self._stall_clock: trio.CancelScope | None = None
        self._stall_budget: Callable[[int], float] | None = None
        self._last_answer_at = -math.inf
        self._closing = False
        # Unbounded is safe: what goes in is bounded by the pool's lanes (at most
        # max_inflight requests, one cancel each, one hello, one shutdown).
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[bytes](math.inf)
        self._outbox_closed = False
        self._held: list[bytes] = []
        self._holding = False
        """In a ``holding`` block: ``_send`` only adds to ``_held``."""
        self._queued_frames = 0
        """Frames in the outbox or being written by the writer task. Direct writes
        wait until it is 0, or a frame would overtake the ones queued before it."""
        self._stdin_fd = pipes.pipe_fd(process.stdin)
        """None for a stream that is not an OS pipe, and from the moment stdin starts
        closing: a closed descriptor's number may be reused by the next open file."""
        stdout_fd = pipes.pipe_fd(process.stdout)
        self._receive_stdout = (
            pipes.FdReceiver(stdout_fd, RECEIVE_SIZE).receive
            if stdout_fd is not None
            else partial(process.stdout.receive_some, RECEIVE_SIZE)
        )
        logger = logger if logger is not None else structlog.get_logger("mcpi.worker")
        self._stderr = StderrRelay(logger.bind(worker=slot, pid=process.pid))

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
        return len(self._requests)

    @property
    def usable(self) -> bool:
        return self.failure is None and not self._closing and self.welcome is not None

    def track_stalls(self, clock: trio.CancelScope, budget: Callable[[int], float]) -> None:
        """Set ``clock.deadline`` to ``stall_deadline(budget)``, and from now on keep it
        no later than that: the clock may ring early, never late.

        The deadline is moved synchronously, at a request or an answer, and only
        when it has to come earlier, so the task waiting in ``clock`` does not wake
        for every request (two task switches each on the hot path of tiny requests:
        benchmarks/overhead.py, tests/test_pool_hot_path.py) and the deadline is not
        re-filed with Trio twice per request either. When the clock rings, the pool
        checks whether a request is really overdue and calls this again: with a
        steady stream of answers that is one wake-up per task budget (≥ 30 s).
        """
        self._stall_clock, self._stall_budget = clock, budget
        clock.deadline = self.stall_deadline(budget)

    def stderr_tail(self) -> str:
        return self._stderr.tail()

    def stall_deadline(self, budget: Callable[[int], float]) -> float:
        """When the oldest unanswered request will have overrun its time budget.

        The worker answers in order of arrival per compute slot, so the oldest request
        cannot have started before it was sent, nor before the previous answer came:
        counting from the later of the two keeps a request queued behind another from
        being charged for its neighbour's time. ``math.inf`` when idle.
        """
        if not self._requests:
            return math.inf
        oldest = next(iter(self._requests.values()))
        return max(oldest.sent_at, self._last_answer_at) + budget(oldest.points)

    def oldest_points(self) -> int:
        return next(iter(self._requests.values())).points if self._requests else 0

    # ------------------------------------------------------------------ requests

    async def handshake(self, client: str) -> Welcome:
        self._send(Hello(versions=PROTOCOL_VERSIONS, client=client))
        await self._welcomed.wait()
        if self.failure is not None:
            raise WorkerFailure(str(self.failure))
        assert self.welcome is not None
        return self.welcome

    def submit(
        self,
        seed: int,
        stream: int,
        points: int,
        kernel: str,
        on_answer: OnAnswer,
    ) -> int | None:
        """Send one ``sample`` request and return its id, without waiting.

        ``on_answer`` is called exactly once, synchronously, with the final answer:
        from the task reading stdout for the worker's ``result`` or ``error``, or
        with a ``WorkerFailure`` from whoever notices the connection break (before
        ``submit`` returns, and then it returns None, if it is broken already). It
        must not block or raise. A batch of requests costs no task per request this
        way (``mcpi_coordinator.pool.batch``).
        """
        request_id = self._register(points, on_answer)
        if request_id is not None:
            self._send(Sample(id=request_id, seed=seed, stream=stream, points=points, kernel=kernel))
        return request_id

    def abandon(self, request_id: int) -> None:
        """Give up on a request: send ``cancel``, drop its final answer when it comes.

        The worker's capacity is handed out again only then (``on_capacity``), so a
        lane never counts a request the worker may still be computing.
        """
        request = self._requests.get(request_id)
        if request is not None and request.on_answer is not None:
            request.on_answer = None
            self._send(Cancel(id=request_id))

    def send_ping(self, on_answer: OnAnswer) -> int | None:
        """Send ``ping``, the protocol's cheapest request, and return its id; the
        ``pong`` goes to ``on_answer`` as a sample's answer does. A ping counts as in
        flight here (and in the pool's lanes), though not in the worker's
        ``max_inflight``: the lane comes back with the pong."""
        request_id = self._register(0, on_answer, ping=True)
        if request_id is not None:
            self._send(Ping(id=request_id))
        return request_id

    def _register(self, points: int, on_answer: OnAnswer, *, ping: bool = False) -> int | None:
        """A new request's id, now counted in flight; None if the connection is broken
        (``on_answer`` has had the failure then)."""
        if self.failure is not None:
            on_answer(WorkerFailure(str(self.failure), was_running=False))
            return None
        request_id = next(self._ids)
        self._requests[request_id] = _Request(points, trio.current_time(), on_answer, ping)
        if len(self._requests) == 1:
            # Only the oldest request sets the stall deadline: one queued behind
            # others changes nothing (``stall_deadline``).
            self._notify_progress()
        return request_id

    def offer_capacity(self) -> None:
        """Room for one more request: ``on_capacity``, unless the worker is closing.
        Called for every final answer, and by whoever took a lane and did not use it."""
        if not self._closing:
            self._on_capacity(self)

    def begin_shutdown(self) -> None:
        """Send ``shutdown`` (if the stream is still sound) and then EOF on stdin."""
        if self._closing:
            return
        self._closing = True
        self._send(Shutdown())
        self._outbox_closed = True
        self._outbox_send.close()  # the writer flushes what is queued, then closes stdin

    def fail(self, failure: WorkerFailure) -> None:
        """Mark the connection broken; the first reason wins. Wakes every waiter."""
        if self.failure is not None:
            return
        self.failure = failure
        requests = list(self._requests.values())
        self._requests.clear()
        for position, request in enumerate(requests):
            if request.on_answer is not None:
                # The worker runs one request at a time, in order of arrival: the
                # oldest was running, the rest only queued behind it.
                request.on_answer(WorkerFailure(str(failure), was_running=position == 0))
        self._welcomed.set()
        self.broken.set()
        self._notify_progress()

    async def stop(self, grace: float, term_grace: float) -> int:
        """The escalation: shutdown → close stdin → ``grace`` → SIGTERM → ``term_grace``
        → SIGKILL; returns once the process is reaped. ``grace=0`` kills at once
        (for a worker that cannot be trusted to listen). Call it in a shielded scope.
        """
        self.begin_shutdown()
        process = self.process
        if grace > 0:
            with trio.move_on_after(grace):
                return await process.wait()
            _signal(process.terminate)
            with trio.move_on_after(term_grace):
                return await process.wait()
        _signal(process.kill)
        return await process.wait()

    # ------------------------------------------------------------------ the three pipes

    async def run_pipes(self) -> None:
        """Write stdin, read stdout, drain stderr, concurrently, until all three end."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_stdin)
            nursery.start_soon(self._read_stdout)
            nursery.start_soon(self._read_stderr)

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
            self.fail(failure)
        finally:
            self._stdin_fd = None
            await trio.aclose_forcefully(stdin)

    async def _read_stdout(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            with worker_failures("reading the worker's stdout"):
                while data := await self._receive_stdout():
                    self._decoder.feed(bytes(data))
                    with self.holding():
                        while (message := self._decoder.next_message()) is not NEED_DATA:
                            self._handle(message)  # type: ignore[arg-type]
                self._decoder.feed_eof()
            raise WorkerFailure("closed its stdout" if self._closing else "exited or closed its stdout")
        except WorkerFailure as failure:
            self.fail(failure)
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

    # ------------------------------------------------------------------ internals

    def holding(self) -> _Holding:
        """``with connection.holding():`` holds the frames sent in the block and writes
        them together at its end.

        The task reading stdout holds while it acts on one read's worth of answers,
        each of which may start the next request on this worker (``lanes``): one
        ``write(2)`` then carries them all. On a small VM a write that wakes the
        worker costs ~15 µs, more than encoding and sending the frame.
        """
        return _Holding(self)

    def _send(self, message: CoordinatorMessage) -> None:
        """Write ``message`` now if stdin is an idle OS pipe, else queue it for the writer
        (or hold it, in a ``holding`` block).

        Synchronous either way, so a frame is never torn by the caller's cancellation.
        """
        if self.failure is not None or self._outbox_closed:
            return  # broken, or shutting down: nothing more goes out
        self._held.append(protocol.encode(message))
        if not self._holding:
            self._flush()

    def _flush(self) -> None:
        if not self._held or self.failure is not None:
            return
        frame = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        if self._queued_frames == 0 and self._stdin_fd is not None:
            try:
                written = pipes.write_nowait(self._stdin_fd, frame)
            except OSError as error:  # not ``with worker_failures``: this runs per request
                self.fail(worker_failure(error, "writing to the worker's stdin"))
                return
            if written == len(frame):
                return
            frame = frame[written:]  # the pipe is full: the writer waits for room
        self._outbox_send.send_nowait(frame)
        self._queued_frames += 1

    def _handle(self, message: WorkerMessage) -> None:
        """Apply one message from the worker; raise ``WorkerFailure`` if it breaks the rules."""
        if isinstance(message, Welcome):
            if self.welcome is not None:
                raise WorkerFailure("sent a second welcome")
            if message.version not in PROTOCOL_VERSIONS:
                raise WorkerFailure(
                    f"chose protocol version {message.version}; we offered {list(PROTOCOL_VERSIONS)}"
                )
            self.welcome = message
            self._welcomed.set()
            return
        if isinstance(message, Error) and message.fatal:
            raise WorkerFailure(f"reported a fatal error: {message.code}: {message.message}")
        if self.welcome is None:
            raise WorkerFailure(f"sent a {message.TYPE} before its welcome")
        if isinstance(message, Result | Pong | Error):
            assert message.id is not None
            self._answer(message.id, message)
            return
        raise WorkerFailure(f"sent an unexpected {message.TYPE} (id {message.id})")

    def _answer(self, request_id: int, answer: Result | Pong | Error) -> None:
        request = self._requests.pop(request_id, None)
        if request is None:
            raise WorkerFailure(f"answered request id {request_id}, which is not in flight")
        if isinstance(answer, Result | Pong) and isinstance(answer, Pong) != request.ping:
            asked = "ping" if request.ping else "sample"
            raise WorkerFailure(f"answered the {asked} request id {request_id} with a {answer.TYPE}")
        if isinstance(answer, Result) and answer.points != request.points:
            raise WorkerFailure(
                f"answered {answer.points} points for a request of {request.points}"
            )
        if isinstance(answer, Result) and answer.inside > answer.points:
            raise WorkerFailure(f"counted {answer.inside} inside out of {answer.points} points")
        self._last_answer_at = trio.current_time()
        if isinstance(answer, Result):
            self.answered += 1
        if request.on_answer is not None:
            request.on_answer(answer)
        self._notify_progress()
        self.offer_capacity()

    def _notify_progress(self) -> None:
        if self._stall_clock is not None and self._stall_budget is not None:
            due = self.stall_deadline(self._stall_budget)
            # Not min(): assigning the deadline re-files it with Trio even when unchanged.
            if due < self._stall_clock.deadline:  # noqa: PLR1730
                self._stall_clock.deadline = due


class _Holding:
    """The ``holding`` block (a class, not ``@contextmanager``: it runs once per read
    on the hot path, and a generator-based one costs several µs)."""

    __slots__ = ("_connection", "_outermost")

    def __init__(self, connection: WorkerConnection) -> None:
        self._connection = connection
        self._outermost = False

    def __enter__(self) -> None:
        self._outermost = not self._connection._holding
        self._connection._holding = True

    def __exit__(self, *_exc: object) -> None:
        if self._outermost:
            self._connection._holding = False
            self._connection._flush()


def _signal(send: Callable[[], None]) -> None:
    try:
        send()
    except ProcessLookupError:
        pass  # it exited on its own between our check and the signal
