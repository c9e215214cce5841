"""``WorkerPool.imap_unordered``: many chunks through the pool, with no task per chunk.

One feeder task takes free lanes and submits chunks on them
(``WorkerConnection.submit``). Each answer comes back as a callback on the task that
reads that worker's stdout, which puts the result in the output channel, or the chunk
back in line (first, ahead of fresh work) when its worker failed. So a chunk costs no
task, no event and no scheduler pass of its own; the feeder wakes once per batch of
free lanes. With a task per chunk, tiny chunks cost the coordinator ~60 µs each and
capped a pool at ~16k chunks/s (benchmarks/overhead.py).

Bounded memory: at most ``window`` chunks are taken from the iterator and not yet
received by the consumer (in flight, waiting for a retry, or waiting in the output
channel), so a 10**13-point run never builds a list.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial

import trio

from mcpi_coordinator.chunks import Attempts, Chunk, ChunkResult
from mcpi_coordinator.errors import McpiError, RequestFailed, WorkerFailure
from mcpi_coordinator.worker_connection import Answer, WorkerConnection, outcome
from mcpi_worker.protocol import Result

TakeLane = Callable[..., Awaitable[WorkerConnection]]
"""``take_lane(retry=bool)``: the next free lane, retries first (``Lanes.take``)."""


class Batch:
    """One ``imap_unordered`` call. Run ``run()`` in a task; read ``results``."""

    def __init__(
        self,
        chunks: Iterator[Chunk],
        window: int,
        *,
        take_free_lane: Callable[[], WorkerConnection | None],
        take_lane: TakeLane,
        check_capabilities: Callable[[WorkerConnection, Chunk], None],
        record: Callable[[WorkerConnection, Chunk, Result], ChunkResult],
        why_it_ended: Callable[[WorkerConnection, McpiError], Awaitable[str]],
        max_chunk_attempts: int,
    ) -> None:
        self._chunks = chunks
        self._take_free_lane = take_free_lane
        self._take_lane = take_lane
        self._check_capabilities = check_capabilities
        self._record = record
        self._why_it_ended = why_it_ended
        self._max_chunk_attempts = max_chunk_attempts
        self._send, receive = trio.open_memory_channel[ChunkResult | McpiError](window)
        self.results = ResultStream(receive, on_received=self._received)
        self._room = window
        self._iterator_done = False
        self._retries: deque[Attempts] = deque()
        self._in_flight: dict[int, tuple[WorkerConnection, int]] = {}
        self._tokens = itertools.count()
        self._unflushed: set[WorkerConnection] = set()
        """Connections holding requests submitted in this burst: flushed, one write
        each, before the feeder waits for anything."""
        self._failed: McpiError | None = None
        """A chunk's failure that ends the batch: sent as the last item."""
        self._failed_on: tuple[Attempts, WorkerConnection] | None = None
        """For a chunk out of attempts: the full account waits for its worker's end."""
        self._changed = trio.Event()
        self._over = False

    async def run(self) -> None:
        """Feed chunks until all are answered or one fails for good; then close
        ``results``. Cancelled (the consumer left), it abandons what is in flight."""
        try:
            await self._feed()
        finally:
            self._over = True  # answers still to come are dropped, not delivered
            in_flight = list(self._in_flight.values())
            self._in_flight.clear()
            for connection, request_id in in_flight:
                connection.abandon(request_id)
            self._send.close()

    async def _feed(self) -> None:
        while self._failed is None:
            attempts = self._next()
            if attempts is None:
                self._flush()
                if self._iterator_done and not self._in_flight and not self._retries:
                    return
                self._changed = trio.Event()
                await self._changed.wait()  # an answer, a retry, or room for more
                continue
            try:
                connection = self._take_free_lane()
                if connection is None:
                    self._flush()
                    connection = await self._take_lane(retry=attempts.tried)
                self._check_capabilities(connection, attempts.chunk)
            except McpiError as error:
                self._failed = error
                break
            self._submit(connection, attempts)
        self._flush()
        if self._failed_on is not None:
            attempts, connection = self._failed_on
            self._failed = attempts.failed(await self._why_it_ended(connection, self._failed))
        # Room: the failed chunk holds a place in the window that nothing else fills.
        self._send.send_nowait(self._failed)

    def _next(self) -> Attempts | None:
        """The next chunk to send: a retry first, else a fresh one if there is room."""
        if self._retries:
            return self._retries.popleft()
        if self._iterator_done or self._room == 0:
            return None
        chunk = next(self._chunks, None)
        if chunk is None:
            self._iterator_done = True
            return None
        self._room -= 1
        return Attempts(chunk, self._max_chunk_attempts)

    def _submit(self, connection: WorkerConnection, attempts: Attempts) -> None:
        token = next(self._tokens)
        chunk = attempts.chunk
        self._in_flight[token] = (connection, -1)
        on_answer = partial(self._on_answer, token, connection, attempts)
        request_id = connection.submit(
            chunk.seed, chunk.stream, chunk.points, chunk.kernel, on_answer, hold=True
        )
        self._unflushed.add(connection)
        if token in self._in_flight:  # not answered already (a connection found broken)
            self._in_flight[token] = (connection, request_id)

    def _flush(self) -> None:
        for connection in self._unflushed:
            connection.flush()
        self._unflushed.clear()

    def _on_answer(
        self, token: int, connection: WorkerConnection, attempts: Attempts, answer: Answer
    ) -> None:
        """Called by the connection, synchronously: record the answer, wake the feeder."""
        if self._over:
            return
        self._in_flight.pop(token, None)
        self._changed.set()
        try:
            result = outcome(connection.slot, answer)
        except (RequestFailed, WorkerFailure) as error:
            self._on_failure(connection, attempts, error)
            return
        assert isinstance(result, Result)
        self._send.send_nowait(self._record(connection, attempts.chunk, result))

    def _on_failure(
        self, connection: WorkerConnection, attempts: Attempts, error: RequestFailed | WorkerFailure
    ) -> None:
        try:
            again = attempts.charge(error)
        except RequestFailed as final:  # no retry can mend it (an unknown kernel)
            again, error = False, final
        if again:
            self._retries.append(attempts)
        elif self._failed is None:
            self._failed = error
            if attempts.charged >= attempts.limit:
                self._failed_on = (attempts, connection)

    def _received(self) -> None:
        self._room += 1
        self._changed.set()


class ResultStream:
    """What ``imap_unordered`` yields: results in completion order; raises a failure."""

    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[ChunkResult | McpiError],
        on_received: Callable[[], None],
    ) -> None:
        self._receive = receive
        self._on_received = on_received

    def __aiter__(self) -> AsyncIterator[ChunkResult]:
        return self

    async def __anext__(self) -> ChunkResult:
        try:
            item = await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        self._on_received()
        if isinstance(item, McpiError):
            raise item
        return item

    def close(self) -> None:
        self._receive.close()
