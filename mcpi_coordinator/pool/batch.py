"""``WorkerPool.imap_unordered``: many chunks through the pool, with no task per chunk.

A ``Batch`` keeps ``window`` chunks dispatched (``mcpi_coordinator.pool.dispatch``). Each
outcome comes back as a callback in the task that read the worker's answer: a result
goes to the ready queue, a chunk whose worker failed goes back in line (first, ahead
of fresh work). The consumer's ``async for`` takes the next chunks from the iterator
as it takes the last result of a burst (below), as many as the burst made room for, so
the user's iterator only ever runs in the user's own task; those chunks that find a
worker with room go out in one write to it, not in one write each (each write wakes
the worker). Per chunk that is no task, no event and no scheduler pass of its own:
with a task per chunk, starting and waking those tasks was most of the coordinator's
cost for tiny chunks, and it capped the chunks a second a small pool could take (the
pool's cost per request is measured by ``benchmarks/overhead.py``, figures in
docs/bench.md).

One schedule point per burst. The iterator is a cancel point at every result, but it
lets other tasks run (a schedule point) once per burst: the results that were ready
when it last yielded or woke are handed out one after another without a scheduler
pass each. No answer can arrive while the consumer runs (only the readers, other
tasks, deliver them), so a burst is what the readers delivered while the consumer was
away: usually what one read of a worker's stdout brought. A scheduler pass per result
was a large share of the coordinator's CPU per tiny chunk (``benchmarks/request_cpu.py``
measures it; figures in docs/bench.md).

Bounded memory: a chunk is taken from the iterator only while fewer than ``window``
are in line or in flight and fewer than ``window`` results wait for the consumer, so a
10**13-point run never builds a list. A range's pieces are cut by the dispatcher
whenever a worker has room, whether or not the consumer keeps up: once ``window``
results wait, the ranges still in line are taken out of it (held) until the consumer
takes one. A consumer that lags so holds the workers back, and the ready queue stays
within ``window`` results and twice what the workers hold in flight (what was in flight
when the ranges were held, and the pieces the dispatcher cut for the room freed by the
answers that filled the queue, before they were delivered here), for a run of any size.

Ranges. A chunk of many streams is sent in pieces sized for each worker by the
dispatcher (``Request.splitter``); each piece is a request of its own here, with its own
attempts, and its result (counts per stream) comes back as a ``ChunkResult`` for just
its streams.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Self

import trio

from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.pool.dispatch import Connection, Dispatcher, Outcome, Request
from mcpi_coordinator.pool.retry import Attempts, Verdict

WhyItEnded = Callable[[Connection, McpiError], Awaitable[str]]


class _OutOfAttempts:
    """A chunk that failed on ``max_chunk_attempts`` workers in a row: the consumer
    waits for the last worker's full account and raises ``ChunkFailed``."""

    def __init__(self, attempts: Attempts, connection: Connection, error: McpiError) -> None:
        self.attempts, self.connection, self.error = attempts, connection, error


class Batch:
    """One ``imap_unordered`` call: iterate it for results in completion order.

    ``start()`` fills the window; ``close()`` takes what is still in line out of it
    and abandons what is in flight (the workers get ``cancel`` and stay in the pool).
    """

    def __init__(
        self,
        chunks: Iterator[Chunk],
        window: int,
        dispatcher: Dispatcher,
        *,
        why_it_ended: WhyItEnded,
        max_chunk_attempts: int,
    ) -> None:
        self._chunks = chunks
        self._window = window
        self._dispatcher = dispatcher
        self._why_it_ended = why_it_ended
        self._max_chunk_attempts = max_chunk_attempts
        self._pending: dict[Request, Attempts] = {}  # dispatched, outcome not yet known
        self._ready: deque[ChunkResult | McpiError | _OutOfAttempts] = deque()
        self._arrived = trio.Event()
        self._waiting = False
        """The consumer waits on ``_arrived``: an outcome sets it (no call per result else)."""
        self._burst = 0
        """Results still to hand out of those ready at the consumer's last schedule
        point (at most ``len(_ready)``): they need none of their own."""
        self._ranges: dict[Request, None] = {}
        """The ranges dispatched whole, not yet ended: pieces are cut off their front."""
        self._held: list[Request] = []
        """Ranges taken out of line while ``window`` results wait (module docstring)."""
        self._iterator_done = False
        self._closed = False

    def start(self) -> None:
        """Fill the window: the requests a worker takes now go out in one write to it."""
        with self._dispatcher.holding():
            self._refill()

    def close(self) -> None:
        self._closed = True  # outcomes still to come are dropped
        self._held.clear()  # out of line, never sent: nothing to withdraw
        pending = list(self._pending)
        self._pending.clear()
        for request in pending:
            self._dispatcher.withdraw(request)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ChunkResult:
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancel point at every result
        if not self._burst:
            # A new burst: let the other tasks run once (see the module docstring).
            if self._ready:
                await trio.lowlevel.cancel_shielded_checkpoint()
            while not self._ready:
                if (self._iterator_done or self._closed) and not self._pending:
                    raise StopAsyncIteration  # closed: nothing more is coming, never wait for it
                self._arrived = trio.Event()
                self._waiting = True
                try:
                    await self._arrived.wait()
                finally:
                    self._waiting = False
            self._burst = len(self._ready)
        self._burst -= 1
        item = self._ready.popleft()
        if isinstance(item, ChunkResult):
            if self._held and len(self._ready) < self._window:
                self._release()
            if not self._burst:
                # The burst's last result: the chunks its results made room for go out
                # now, together (one write to each worker with room, not one per chunk).
                with self._dispatcher.holding():
                    self._refill()
            return item
        self.close()
        if isinstance(item, _OutOfAttempts):
            item = item.attempts.failed(await self._why_it_ended(item.connection, item.error))
        raise item

    # ------------------------------------------------------------------ internals

    def _refill(self) -> None:
        """Take chunks from the iterator while fewer than ``window`` are outstanding and
        fewer than ``window`` results wait."""
        if len(self._ready) >= self._window:
            return
        while len(self._pending) < self._window and not (self._iterator_done or self._closed):
            chunk = next(self._chunks, None)
            if chunk is None:
                self._iterator_done = True
                return
            self._dispatch(Attempts(chunk, self._max_chunk_attempts))

    def _dispatch(self, attempts: Attempts) -> None:
        request = Request(attempts.chunk, self._on_outcome, splitter=self._split)
        self._pending[request] = attempts
        if attempts.chunk is not None and attempts.chunk.streams > 1:
            self._ranges[request] = None
        self._dispatcher.dispatch(request, retry=attempts.tried)

    def _split(self, request: Request, streams: int) -> Request:
        """The dispatcher's ``Request.splitter``: a piece of ``streams`` streams off the
        front of ``request``'s range, charged as the range was so far."""
        attempts = self._pending[request]
        assert request.chunk is not None
        head, rest = request.chunk.split(streams)
        piece = Request(head, self._on_outcome, request.avoid, splitter=self._split)
        self._pending[piece] = Attempts(head, attempts.limit, attempts.charged, attempts.tried)
        request.chunk = attempts.chunk = rest
        return piece

    def _on_outcome(self, request: Request, outcome: Outcome) -> None:
        """Called by the dispatcher's delivery loop, from any task; never raises."""
        if self._closed:
            return
        attempts = self._pending.pop(request)
        if self._ranges:
            self._ranges.pop(request, None)
        if self._waiting:
            self._waiting = False  # woken once, by the first of a read's results
            self._arrived.set()
        verdict = attempts.judge(outcome)
        if verdict is Verdict.AGAIN:
            self._dispatch(attempts)
        elif verdict is Verdict.SPENT:
            assert request.connection is not None and isinstance(outcome, McpiError)
            self._ready.append(_OutOfAttempts(attempts, request.connection, outcome))
        else:
            assert outcome is not None  # a chunk's outcome: never a pong
            self._ready.append(outcome)
        if len(self._ready) >= self._window and self._ranges:
            self._hold()

    def _hold(self) -> None:
        """Take the ranges waiting in line out of it: no more pieces are cut off them
        until the consumer takes a result (``_release``). Called in the dispatcher's
        delivery loop, where a range that has pieces out is back in line."""
        for request in self._ranges:
            if request.waiting:
                self._dispatcher.withdraw(request)
                self._held.append(request)

    def _release(self) -> None:
        """Put the held ranges back in line. Withdrawing one left nothing on any worker:
        a request waiting in line has never been sent (a retry is a new request)."""
        held, self._held = self._held, []
        for request in held:
            self._dispatcher.dispatch(request, retry=request.retried)
