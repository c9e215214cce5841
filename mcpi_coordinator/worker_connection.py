"""One worker process: its three pipes, the protocol state, and the requests in flight.

A ``WorkerConnection`` is the async shell around the sans-IO core in
``mcpi_worker.protocol``: one task writes stdin from an outbox, one reads stdout into
a ``FrameDecoder`` and matches responses to requests by id, one drains stderr. The
three run concurrently (``run_pipes``), so no pipe can fill up and deadlock the others.

Anything that goes wrong on this connection (EOF, a broken pipe, a protocol
violation, a fatal ``error`` from the worker, a stall noticed by the pool) ends up in
``fail()``: the first reason is kept, every request still waiting is woken with a
``WorkerFailure``, and ``broken`` is set. The connection never retries or restarts
anything itself; that is the pool's job (``mcpi_coordinator.pool``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
import trio

from mcpi_coordinator.errors import RequestFailed, WorkerFailure, worker_failures
from mcpi_coordinator.stderr_relay import StderrRelay
from mcpi_coordinator.transport import WorkerProcess
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
    Result,
    Sample,
    Shutdown,
    Welcome,
    WorkerMessage,
)

RECEIVE_SIZE: Final[int] = 64 * 1024


@dataclass(eq=False)
class _Request:
    """A sample request the worker has not answered yet."""

    points: int
    sent_at: float
    done: trio.Event = field(default_factory=trio.Event)
    answer: Result | Error | WorkerFailure | None = None
    abandoned: bool = False
    """The caller was cancelled: a ``cancel`` was sent, the final answer is dropped."""
    was_running: bool = False
    """Set on failure: this was the oldest request, the one the worker was computing."""


class WorkerConnection:
    """Speaks the protocol with one ``WorkerProcess``. Run ``run_pipes()`` in a nursery.

    ``on_capacity(self)`` is called each time the worker gives a final answer to a
    sample request, i.e. each time it has room for one more. The pool hands out
    "lanes" that way, which is what makes work pulled rather than pushed.
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
        # max_inflight samples, one cancel each, one hello, one shutdown).
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[bytes](math.inf)
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
        """Sample requests sent and not answered yet (cancelled ones included)."""
        return len(self._requests)

    @property
    def usable(self) -> bool:
        return self.failure is None and not self._closing and self.welcome is not None

    def track_stalls(self, clock: trio.CancelScope, budget: Callable[[int], float]) -> None:
        """Keep ``clock.deadline`` at ``stall_deadline(budget)`` from now on.

        The deadline is moved synchronously at every request and answer, so the task
        waiting in ``clock`` wakes only when the oldest request overruns its budget,
        not twice per request: on the hot path of tiny requests those wake-ups were
        two task switches each (benchmarks/overhead.py, tests/test_pool_hot_path.py).
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

    async def sample(self, seed: int, stream: int, points: int, kernel: str) -> Result:
        """Send one ``sample`` request and wait for its answer.

        Raises ``WorkerFailure`` if the connection breaks first, ``RequestFailed`` if
        the worker answers with an ``error``. If the caller is cancelled, a ``cancel``
        goes to the worker; its final answer (result or ``cancelled``) is dropped when
        it arrives, and only then is the worker's capacity handed out again.
        """
        if self.failure is not None:
            raise WorkerFailure(str(self.failure))
        request_id = next(self._ids)
        request = _Request(points=points, sent_at=trio.current_time())
        self._requests[request_id] = request
        self._send(Sample(id=request_id, seed=seed, stream=stream, points=points, kernel=kernel))
        self._notify_progress()
        try:
            await request.done.wait()
        except BaseException:
            if not request.done.is_set():
                request.abandoned = True
                self._send(Cancel(id=request_id))
            raise
        answer = request.answer
        if isinstance(answer, Result):
            return answer
        if isinstance(answer, Error):
            raise RequestFailed(
                f"worker {self.slot} refused the request: {answer.code}: {answer.message}",
                retryable=answer.retryable,
            )
        assert answer is not None
        raise WorkerFailure(str(answer), was_running=request.was_running)

    def begin_shutdown(self) -> None:
        """Send ``shutdown`` (if the stream is still sound) and then EOF on stdin."""
        if self._closing:
            return
        self._closing = True
        self._send(Shutdown())
        self._outbox_send.close()  # the writer flushes what is queued, then closes stdin

    def fail(self, failure: WorkerFailure) -> None:
        """Mark the connection broken; the first reason wins. Wakes every waiter."""
        if self.failure is not None:
            return
        self.failure = failure
        for position, request in enumerate(self._requests.values()):
            request.answer = failure
            request.was_running = position == 0  # one at a time, in order of arrival
            request.done.set()
        self._requests.clear()
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
                await stdin.aclose()
        except WorkerFailure as failure:
            self.fail(failure)
        finally:
            await trio.aclose_forcefully(stdin)

    async def _read_stdout(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            with worker_failures("reading the worker's stdout"):
                while data := await stdout.receive_some(RECEIVE_SIZE):
                    self._decoder.feed(bytes(data))
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

    def _send(self, message: CoordinatorMessage) -> None:
        if self.failure is not None:
            return
        try:
            self._outbox_send.send_nowait(protocol.encode(message))
        except trio.ClosedResourceError:
            pass  # shutting down: stdin is being closed, nothing more goes out

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
        if isinstance(message, Result | Error):
            assert message.id is not None
            self._answer(message.id, message)
            return
        raise WorkerFailure(f"sent an unexpected {message.TYPE} (id {message.id})")

    def _answer(self, request_id: int, answer: Result | Error) -> None:
        request = self._requests.pop(request_id, None)
        if request is None:
            raise WorkerFailure(f"answered request id {request_id}, which is not in flight")
        if isinstance(answer, Result) and answer.points != request.points:
            raise WorkerFailure(
                f"answered {answer.points} points for a request of {request.points}"
            )
        if isinstance(answer, Result) and answer.inside > answer.points:
            raise WorkerFailure(f"counted {answer.inside} inside out of {answer.points} points")
        self._last_answer_at = trio.current_time()
        if isinstance(answer, Result):
            self.answered += 1
        if not request.abandoned:
            request.answer = answer
            request.done.set()
        self._notify_progress()
        if not self._closing:
            self._on_capacity(self)

    def _notify_progress(self) -> None:
        if self._stall_clock is not None and self._stall_budget is not None:
            self._stall_clock.deadline = self.stall_deadline(self._stall_budget)


def _signal(send: Callable[[], None]) -> None:
    try:
        send()
    except ProcessLookupError:
        pass  # it exited on its own between our check and the signal
