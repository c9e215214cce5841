"""Free pipelining lanes of the pool's workers, matched with the requests waiting for one.

A lane is permission to have one more request in flight on one worker. A ready
worker offers ``depth`` lanes, and one more each time it answers a request: work is
pulled by whoever has room.

A request waiting for a lane is a ``Ticket``: it has a synchronous ``start(lane)``.
When a lane is offered, the first ticket's ``start`` runs right there, in the task
that offered it: usually the task that just read the worker's answer, which thereby
sends the next request on the same worker with no other task woken and, batched with
the other answers of its read, in one write. A task waiting for a lane and then for
its answer would cost two task switches per request; this costs none.

Retries go first: a request whose worker died must not queue behind the fresh ones,
where it would land deep in some worker's queue; a worker that dies after every N
requests (a leak, an OOM killer) would then catch the same unlucky chunk over and
over, until it looked like a poison chunk. First in line, a retried chunk is the next
thing some worker computes.

Invariant: a lane is in ``_free`` only while no ticket waits.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any, Generic, Protocol, TypeVar


class Lane(Protocol):
    @property
    def usable(self) -> bool: ...


L = TypeVar("L", bound=Lane)
L_contra = TypeVar("L_contra", bound=Lane, contravariant=True)


class Ticket(Protocol[L_contra]):
    """One request's place in line (``mcpi_coordinator.pool.dispatch.Request`` is one)."""

    queue: deque[Any] | None
    """The line it waits in; kept by ``Lanes``, None when not waiting."""

    def start(self, lane: L_contra) -> None:
        """Send the request on ``lane``. Synchronous; must not raise."""

    def refuse(self, error: Exception) -> None:
        """Called instead, with the error given to ``Lanes.close``, if no lane ever comes."""


class Lanes(Generic[L]):
    def __init__(self) -> None:
        self._free: deque[L] = deque()
        self._retries: deque[Ticket[L]] = deque()
        self._fresh: deque[Ticket[L]] = deque()
        self._closed: Exception | None = None

    def __repr__(self) -> str:
        return f"<Lanes free={len(self._free)} waiting={len(self._retries)}+{len(self._fresh)}>"

    def dispatch(self, ticket: Ticket[L], *, retry: bool = False) -> None:
        """Start ``ticket`` on a free usable lane now, or as soon as one is offered
        (retries first, then in order of arrival). Raises the error given to
        ``close`` once closed."""
        if self._closed is not None:
            raise copy.copy(self._closed)  # one instance per raise: tracebacks differ
        while self._free:
            lane = self._free.popleft()
            if lane.usable:  # lanes of workers that failed meanwhile are dropped
                ticket.start(lane)
                return
        ticket.queue = self._retries if retry else self._fresh
        ticket.queue.append(ticket)

    def withdraw(self, ticket: Ticket[L]) -> bool:
        """Take a ticket out of line; False if it has started already (or was refused)."""
        if ticket.queue is None:
            return False
        ticket.queue.remove(ticket)
        ticket.queue = None
        return True

    def offer(self, lane: L) -> None:
        """Make ``lane`` available: start the first retry waiting, else the first fresh
        request, else keep it for the next ``dispatch``. Ignored once closed, or if
        the lane's worker is no longer usable."""
        if self._closed is not None or not lane.usable:
            return
        for queue in (self._retries, self._fresh):
            if queue:
                ticket = queue.popleft()
                ticket.queue = None
                ticket.start(lane)
                return
        self._free.append(lane)

    def close(self, error: Exception) -> None:
        """No more lanes: every waiting ticket is refused, every later ``dispatch`` raises."""
        if self._closed is not None:
            return
        self._closed = error
        self._free.clear()
        for queue in (self._retries, self._fresh):
            while queue:
                ticket = queue.popleft()
                ticket.queue = None
                ticket.refuse(copy.copy(error))
