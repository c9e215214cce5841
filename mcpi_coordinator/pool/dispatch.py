"""Requests on their way through the pool: in line for a lane, then on a worker.

The ``Dispatcher`` owns the pool's ``Lanes``. ``dispatch(request)`` starts a request
on a free lane at once, or queues it; when a worker answers, the lane it frees starts
the next request in line right away, in the task that read the answer
(``Request.start``: a ``Request`` is its own ``lanes.Ticket``). Each request's one
final answer is turned into its *outcome*, a ``ChunkResult`` (``None`` for a ping's
pong) or the ``McpiError`` it ended with, and handed to ``request.deliver``,
synchronously.

Both ways of using the pool build on this: ``send_and_wait`` for one request awaited
by a task (``WorkerPool.sample``, ``WorkerPool.ping``), and callbacks for many at once
(``mcpi_coordinator.pool.batch``), which cost no task per chunk.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from mcpi_coordinator.chunks import Chunk, ChunkResult
from mcpi_coordinator.connection.worker_connection import Answer, WorkerConnection
from mcpi_coordinator.errors import McpiError, RequestFailed
from mcpi_coordinator.pool.lanes import Lanes
from mcpi_worker.protocol import Error, Pong, Result

Outcome = ChunkResult | McpiError | None
"""What became of a request: its result (None: a ping was answered) or its error."""


@dataclass(eq=False, slots=True)
class Request:
    """One ``sample`` of ``chunk`` (or a ``ping`` when ``chunk`` is None): the ticket
    that waits in the lanes' line, then the request on a worker."""

    chunk: Chunk | None
    deliver: Callable[[Request, Outcome], None]
    """Called once with the outcome, synchronously, from whichever task learns it.
    It must not block or raise."""
    connection: WorkerConnection | None = None
    """The worker the request went to, once it has started."""
    request_id: int | None = None
    outcome: Outcome = None
    queue: deque[Any] | None = None
    """While in line for a lane: the line (``lanes.Ticket``)."""
    record: Callable[[WorkerConnection, Chunk, Result], ChunkResult] | None = None
    """Set by the ``Dispatcher``: how a result becomes the pool's ``ChunkResult``."""

    def start(self, connection: WorkerConnection) -> None:
        """A lane is free: send the request on it (``lanes.Ticket``)."""
        self.connection = connection
        chunk = self.chunk
        if chunk is None:
            self.request_id = connection.send_ping(self.answered)
            return
        problem = _capability_problem(connection, chunk)
        if problem is not None:
            self.deliver(self, RequestFailed(problem))
            connection.offer_capacity()  # the lane was never used
            return
        self.request_id = connection.submit(
            chunk.seed, chunk.stream, chunk.points, chunk.kernel, self.answered
        )

    def refuse(self, error: Exception) -> None:
        """No lane will come: the pool closed (``lanes.Ticket``)."""
        assert isinstance(error, McpiError)
        self.deliver(self, error)

    def answered(self, answer: Answer) -> None:
        """The worker's final answer (or the connection's failure): deliver its outcome."""
        outcome: Outcome
        if isinstance(answer, Result):
            assert self.chunk is not None and self.connection is not None and self.record is not None
            outcome = self.record(self.connection, self.chunk, answer)
        elif isinstance(answer, Pong):
            outcome = None
        elif isinstance(answer, Error):
            assert self.connection is not None
            outcome = RequestFailed(
                f"worker {self.connection.slot} refused the request: {answer.code}: {answer.message}",
                retryable=answer.retryable,
            )
        else:
            outcome = answer
        self.deliver(self, outcome)


class Dispatcher:
    """Matches requests with free lanes. ``record`` turns a worker's result into the
    pool's ``ChunkResult`` (and counts it)."""

    def __init__(self, record: Callable[[WorkerConnection, Chunk, Result], ChunkResult]) -> None:
        self._lanes: Lanes[WorkerConnection] = Lanes()
        self._record = record

    def offer(self, connection: WorkerConnection) -> None:
        """One more request fits on ``connection``: start the next one in line."""
        self._lanes.offer(connection)

    def close(self, error: McpiError) -> None:
        """Deliver ``error`` to every request still in line; refuse new ones with it."""
        self._lanes.close(error)

    def dispatch(self, request: Request, *, retry: bool = False) -> None:
        """Start ``request`` on a free lane now, or queue it (retries first).
        Raises the ``close`` error once closed."""
        request.record = self._record
        self._lanes.dispatch(request, retry=retry)

    def withdraw(self, request: Request) -> None:
        """The caller gave up: take the request out of line, or abandon it on its
        worker (``cancel`` is sent; the worker's capacity comes back with its answer)."""
        if self._lanes.withdraw(request):
            return
        if request.connection is not None and request.request_id is not None:
            request.connection.abandon(request.request_id)

    async def send_and_wait(self, chunk: Chunk | None, *, retry: bool = False) -> Request:
        """Dispatch one request and wait for its outcome (``request.outcome``).
        A cancelled caller withdraws it."""
        done = trio.Event()

        def deliver(request: Request, outcome: Outcome) -> None:
            request.outcome = outcome
            done.set()

        request = Request(chunk, deliver)
        self.dispatch(request, retry=retry)
        try:
            await done.wait()
        except BaseException:
            if not done.is_set():
                self.withdraw(request)
            raise
        return request


def _capability_problem(connection: WorkerConnection, chunk: Chunk) -> str | None:
    """Why ``connection``'s worker cannot take ``chunk`` (its welcome rules it out), or None."""
    welcome = connection.welcome
    assert welcome is not None
    problem = None
    if chunk.kernel not in welcome.kernels:
        problem = f"does not offer kernel {chunk.kernel!r} (it offers {', '.join(welcome.kernels)})"
    elif chunk.points > welcome.max_points:
        problem = f"accepts at most {welcome.max_points} points per request, not {chunk.points}"
    if problem is None:
        return None
    return f"worker {connection.slot} ({welcome.worker}) {problem}"
