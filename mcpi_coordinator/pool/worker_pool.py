"""The persistent Trio pool: spawn, handshake, dispatch, recover, close.

    async with WorkerPool(size=4) as pool:
        result = await pool.sample(Chunk(seed=1, stream=0, points=10_000_000))
        async with pool.imap_unordered(chunks) as results:
            async for result in results:
                ...

How it fits together:

- **Slots.** The pool has ``size`` slots (``slot``). Each slot is one supervisor task that
  launches a worker (through the ``launcher``: a local process by default, anything
  speaking the protocol over stdio otherwise), completes the handshake within
  ``startup_timeout``, serves until the worker fails, then kills and reaps it and
  launches a replacement. A slot whose workers keep failing before doing any useful
  work is retired after ``max_start_attempts`` tries (with back-off); when every
  slot is retired, requests fail with ``PoolExhausted``.
- **Lanes: work is pulled.** A ready worker offers ``depth`` lanes (the pipelining
  depth: ``pipeline_depth``, capped by the ``max_inflight`` of its welcome), and
  offers a lane again each time it answers a request. A request takes a free lane
  or waits in line for one, so a fast worker gets more work and a slow or remote one
  less, without any scheduler deciding. A freed lane starts the next request in
  line at once, in the task that read the answer (``dispatch``): a request
  costs no task of its own, and ``imap_unordered`` none per chunk (``batch``).
- **Starting in turn.** At most ``max_starting`` workers are between launch and
  welcome at once (per limiter: ``starting_limits`` gives each slot its own, so each
  ssh host can have its own bound); the others wait in line (state ``queued``), and
  the start-up timeout runs only once a worker's turn has come. A worker's start is
  CPU-bound (imports), so starting 200 at once on 2 cores only made each slower,
  starved the coordinator, and left 200 workers between exec and their parent-death
  backstop when the coordinator died; ssh hosts refuse handshakes beyond
  ``MaxStartups``.
- **Recovery.** A request whose worker dies, breaks the protocol or stalls past the
  task timeout gets ``WorkerFailure``; ``sample``, ``ping`` and batches then send it
  again on the next free lane, by the one rule of ``retry``. Chunks are deterministic,
  so a retried chunk counts the same.
- **Cancellation.** Cancelling a caller of ``sample`` sends ``cancel`` for its
  request. Leaving ``async with`` stops every slot: shutdown → close stdin → grace →
  SIGTERM → SIGKILL, and returns only once every worker process has been reaped.
  The slots run shielded from the caller's cancellation for exactly that reason:
  the escalation must run to the end with every pipe task still alive, however the
  block was left (an error, Ctrl-C, a deadline).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Final, Self

import trio

from mcpi_coordinator import logs
from mcpi_coordinator.errors import McpiError, PoolClosed, PoolExhausted
from mcpi_coordinator.launch.capacity import default_max_starting
from mcpi_coordinator.launch.local import command_launcher, default_worker_command
from mcpi_coordinator.launch.transport import Launcher, StartLimiter
from mcpi_coordinator.pool.batch import Batch
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.pool.dispatch import Connection, Dispatcher, Request
from mcpi_coordinator.pool.retry import Attempts, Verdict
from mcpi_coordinator.pool.slot import Slot, SlotSettings
from mcpi_coordinator.pool.stats import FailedWorker, PoolState, PoolStats, SlotState, WorkerStats
from mcpi_worker import __version__  # not mcpi_coordinator's: its __init__ names the layers above
from mcpi_worker.protocol import Result

__all__ = [
    "CLIENT_NAME",
    "DEFAULT_PIPELINE_DEPTH",
    "FailedWorker",
    "PoolStats",
    "WorkerPool",
    "WorkerStats",
    "default_task_timeout",
]

log = logs.get_logger("mcpi.pool")

CLIENT_NAME: Final[str] = f"mcpi-coordinator/{__version__}"

TASK_TIMEOUT_FLOOR_S: Final[float] = 30.0
TASK_TIMEOUT_PER_POINT_S: Final[float] = 1e-6
"""The default task timeout is ``30 s + 1 µs per point`` of the request.

Derived from nothing fragile: not from timings observed in this run (a cold start or
a loaded machine would make those lie), only from the request's size. 1 µs per
point is many times slower than the slowest kernel (the pure-Python one; each
kernel's speed is measured by ``benchmarks/kernel.py``, figures in docs/worker.md),
so only a hung worker gets there; the 30 s floor covers start-up noise and slow
links. A 10-million-point chunk gets 40 s.
"""


DEFAULT_PIPELINE_DEPTH: Final[int] = 2
"""Requests in flight per worker: one computing and one ready, so a worker never waits
for the coordinator between chunks of a millisecond or more, while a slow worker holds
only one chunk back at the end of a run. Tiny chunks want more (``mcpi estimate
--pipeline-depth``): when a chunk takes less than the coordinator's round trip, a
worker with one chunk ready still waits between chunks (the measured gain is in
docs/estimate.md, ``--pipeline-depth``)."""


def default_task_timeout(points: int) -> float:
    """Seconds a request of ``points`` points may take once it could have started, when
    ``WorkerPool(task_timeout=None)``: ``TASK_TIMEOUT_FLOOR_S`` plus
    ``TASK_TIMEOUT_PER_POINT_S`` per point. Pure; never raises."""
    return TASK_TIMEOUT_FLOOR_S + points * TASK_TIMEOUT_PER_POINT_S


# --------------------------------------------------------------------------- the pool


class WorkerPool:
    """A persistent pool of ``size`` workers. Use as ``async with WorkerPool(...) as pool``.

    ``size`` is the number of slots, each running one worker at a time. ``command``
    starts one worker (default: this interpreter's ``mcpi-worker``); ``launcher``
    replaces it entirely (ssh, fakes in tests: anything returning a
    ``transport.WorkerProcess``). ``pipeline_depth`` is how many requests each of a
    worker's jobs may have in flight (at most its ``max_inflight`` in all).
    ``startup_timeout`` (seconds) bounds a start from the worker's turn to start to its
    welcome; ``max_start_attempts`` starts in a row that fail before any useful work
    retire a slot, with ``backoff_s`` doubled after each. ``task_timeout`` is a fixed
    per-request limit in seconds; ``None`` means ``default_task_timeout(points)``.
    ``max_chunk_attempts`` workers in a row failing on one chunk make it a
    ``ChunkFailed``. ``shutdown_grace`` (seconds) is how long a worker asked to shut
    down gets before SIGTERM, and again before SIGKILL. ``client`` is the name sent in
    the ``hello``, and ``expected_points`` the size hint sent with it (protocol.md §5.1:
    the points each worker is expected to count; None sends none).

    ``slot_hosts`` names the host each slot's workers run on (None: here); slots on one
    host are reported together: only the first of them to be retired logs a warning,
    so an unreachable host is one warning line, not one per worker (the others are
    logged at info). ``max_starting`` bounds the workers between launch and welcome at
    once (default: ``default_max_starting()``); ``starting_limits`` instead gives each
    slot a ``trio.CapacityLimiter`` (or any ``StartLimiter``), and slots sharing one
    share its bound (one per ssh host, say).

    Raises ``ValueError`` at once for a ``size``, ``pipeline_depth`` or
    ``max_starting`` below 1, a ``slot_hosts`` or ``starting_limits`` whose length is
    not ``size``, or both of ``command`` and ``launcher`` (or of ``max_starting`` and
    ``starting_limits``). Nothing starts until the pool is entered.

    Entering the pool starts every slot and waits until each has a ready worker or has
    given up (with ``wait_for_all=False``, only until the first worker is ready: work
    starts then, and each other worker takes its share once it is ready). It raises
    ``PoolExhausted`` if every slot retired before any worker was ready (having stopped
    everything it started), and ``RuntimeError`` if the pool was entered before.
    Leaving it stops and reaps every worker, however the block is left; the block's
    own exception propagates unchanged.
    """

    def __init__(
        self,
        size: int,
        command: Sequence[str] | None = None,
        *,
        launcher: Launcher | None = None,
        pipeline_depth: int = DEFAULT_PIPELINE_DEPTH,
        startup_timeout: float = 10.0,
        task_timeout: float | None = None,
        max_start_attempts: int = 3,
        max_chunk_attempts: int = 5,
        shutdown_grace: float = 1.0,
        backoff_s: float = 0.2,
        client: str = CLIENT_NAME,
        slot_hosts: Sequence[str | None] | None = None,
        max_starting: int | None = None,
        starting_limits: Sequence[StartLimiter] | None = None,
        wait_for_all: bool = True,
        expected_points: int | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, not {size}")
        if slot_hosts is not None and len(slot_hosts) != size:
            raise ValueError(f"slot_hosts names {len(slot_hosts)} slots, not {size}")
        if pipeline_depth < 1:
            raise ValueError("pipeline_depth must be at least 1")
        if starting_limits is not None and len(starting_limits) != size:
            raise ValueError(f"starting_limits has {len(starting_limits)} limiters, not {size}")
        if max_starting is not None and starting_limits is not None:
            raise ValueError("pass either max_starting or starting_limits, not both")
        if max_starting is not None and max_starting < 1:
            raise ValueError("max_starting must be at least 1")
        if launcher is not None and command is not None:
            raise ValueError("pass either command or launcher, not both")
        if launcher is None:
            argv = list(command) if command is not None else default_worker_command()
            launcher = command_launcher(lambda _index: argv)
        self.size = size
        self._pipeline_depth = pipeline_depth
        self._max_chunk_attempts = max_chunk_attempts
        self._shutdown_grace = shutdown_grace
        self._wait_for_all = wait_for_all
        settings = SlotSettings(
            launcher=launcher,
            client=client,
            task_budget=default_task_timeout if task_timeout is None else (lambda _points: task_timeout),
            pipeline_depth=pipeline_depth,
            startup_timeout=startup_timeout,
            max_start_attempts=max_start_attempts,
            shutdown_grace=shutdown_grace,
            backoff_s=backoff_s,
            expected_points=expected_points,
        )
        if starting_limits is None:
            starting_limits = [trio.CapacityLimiter(max_starting or default_max_starting())] * size
        hosts = list(slot_hosts) if slot_hosts is not None else [None] * size
        self._dispatcher = Dispatcher(record=self._record, slots=size)
        self._slots = [
            Slot(i, self, self._dispatcher, settings, starting_limits[i], hosts[i]) for i in range(size)
        ]
        self._unsettled = size  # slots that are neither ready once nor retired
        self._settled_all = trio.Event()
        self._changed = trio.Event()
        """Set (and replaced) whenever a slot's state changes: ``state_changed``."""
        self._deferred_warnings: list[tuple[str, dict[str, Any]]] = []
        self._hosts_warned: set[str] = set()
        self._failures: list[FailedWorker] = []
        self._state = PoolState.NEW
        self._exhausted: PoolExhausted | None = None
        self._nursery_manager: Any = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        if self._state is not PoolState.NEW:
            raise RuntimeError("a WorkerPool can be entered only once")
        self._state = PoolState.OPEN
        self._nursery_manager = trio.open_nursery()
        nursery = await self._nursery_manager.__aenter__()
        for slot in self._slots:
            nursery.start_soon(slot.run, name=f"mcpi slot {slot.index}")
        try:
            await self._settled_all.wait()
            if self._exhausted is not None:
                raise PoolExhausted(str(self._exhausted))
        except BaseException as error:
            await self.__aexit__(type(error), error, error.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state is PoolState.CLOSED:
            return
        self._begin_close()
        # A nursery always waits for its children, cancelled or not, so this returns
        # only after every slot has reaped its worker. The body's own exception is
        # not passed in: it propagates as it is, not wrapped in an ExceptionGroup.
        try:
            await self._nursery_manager.__aexit__(None, None, None)
        finally:
            self._state = PoolState.CLOSED

    def _begin_close(self) -> None:
        if self._closing():
            return
        self._state = PoolState.CLOSING
        self._dispatcher.close(PoolClosed("the worker pool is closed"))
        for slot in self._slots:
            slot.stop()

    def _closing(self) -> bool:
        """A method for the reason ``Slot.retiring`` is one: closing starts meanwhile."""
        return self._state in (PoolState.CLOSING, PoolState.CLOSED)

    # ------------------------------------------------------------------ public API

    async def sample(self, chunk: Chunk, *, avoid: Iterable[int] = ()) -> ChunkResult:
        """Count one chunk on the next free worker, retrying on another if one fails;
        return its ``ChunkResult`` (for a range, with ``insides``: each stream's count).

        ``avoid`` names slots whose workers must not compute it (to check a count on a
        different worker). A worker that dies, breaks the protocol or stalls is
        replaced and the chunk sent again; that ``WorkerFailure`` is not raised. So is a
        worker that refuses it for good (a non-retryable ``error``): the pool sends only
        what a worker's welcome admits, so that worker contradicts its welcome.

        Raises ``ChunkFailed`` once ``max_chunk_attempts`` workers in a row failed while
        computing it or refused it (a poison chunk, or one every worker refuses);
        ``RequestFailed`` if no worker can take it (no worker offers its kernel or
        accepts its size, or all that do are avoided); ``PoolExhausted`` when no worker is left;
        ``PoolClosed`` once the pool is closing or closed; ``trio.Cancelled`` as any
        Trio call does (the worker is sent ``cancel`` and stays in the pool). A chunk
        whose fields are out of the protocol's range never gets here: ``Chunk`` raises
        ``InvalidChunk`` (a ``RequestFailed``) where it is made.
        """
        self._require_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        request = await self._until_final(Attempts(chunk, self._max_chunk_attempts), frozenset(avoid))
        assert isinstance(request.outcome, ChunkResult)
        return request.outcome

    async def ping(self) -> int:
        """Send the protocol's cheapest request, ``ping``, through the pool and wait
        for its ``pong``; return the slot that answered.

        It takes the next worker with room as a chunk does, so its round trip is the
        pool's own cost per request with no work in it (``mcpi bench overhead``), and
        it tells that a worker answers. A worker failing meanwhile is replaced and the
        ping sent again, up to ``max_chunk_attempts`` times; then that failure is
        raised (a ``WorkerFailure``). A worker answering the ping with a retryable
        ``error`` raises ``RequestFailed`` at once (one not retryable breaks the worker,
        as for a sample). Raises ``PoolExhausted``/``PoolClosed`` and
        ``trio.Cancelled`` as ``sample`` does.
        """
        self._require_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        request = await self._until_final(Attempts(None, self._max_chunk_attempts))
        assert request.connection is not None
        return request.connection.slot

    @asynccontextmanager
    async def imap_unordered(self, chunks: Iterable[Chunk]) -> AsyncIterator[AsyncIterator[ChunkResult]]:
        """Run ``chunks`` (any iterable, consumed lazily) and yield results as they finish.

        ``async with pool.imap_unordered(chunks) as results`` gives an async iterator of
        ``ChunkResult``s in completion order. A range (``Chunk.streams`` > 1) may be
        sent in pieces sized for each worker: then each result is one piece's, its
        ``chunk`` naming the streams it counted, and the pieces together cover the range
        once. Chunks are taken from ``chunks`` only as room frees up, in the consumer's
        task, so an exception from ``chunks`` itself is raised by the iterator (or on
        entering the block, for the first ones). The iterator is a cancel point at
        every result, and lets other tasks run once per burst of results that arrived
        together, not once per result (``pool.batch``).

        Entering raises ``PoolExhausted``/``PoolClosed`` if the pool is not open. The
        iterator raises what ``sample`` would for a chunk (``ChunkFailed``,
        ``RequestFailed``, ``PoolExhausted``, ``PoolClosed``) at the first chunk that
        ends so, and stops taking chunks then. Leaving the block early, by an error or
        a ``break``, cancels the chunks still running (their workers get ``cancel`` and
        stay in the pool for more work).
        """
        self._require_open()
        # At most this many chunks are in the pool at once, so a 10**13-point run
        # never builds a list: every lane busy, and as many chunks again in line, so
        # that a worker's answers start its next requests at once (``dispatch``) rather
        # than wait for the consumer to take their results. No more lanes than the
        # ready workers really offer (a welcome's ``max_inflight`` caps the depth): a
        # window of the depth asked for, 1024 a worker where workers take 64, had the
        # consumer cut and queue thousands of requests before its first result.
        window = 2 * min(self.size * self._pipeline_depth, self._dispatcher.lanes(self._pipeline_depth))
        batch = Batch(
            iter(chunks),
            window,
            self._dispatcher,
            why_it_ended=self._why_it_ended,
            max_chunk_attempts=self._max_chunk_attempts,
        )
        try:
            batch.start()
            yield batch
        finally:
            batch.close()

    def retire(self, slot: int, reason: str) -> None:
        """Stop using ``slot`` (0 to ``size`` - 1) for good (a worker found giving wrong
        counts, say): its worker is stopped, what it had in flight goes to the others,
        and no replacement is started. ``reason`` is logged as a warning and recorded in
        ``PoolStats.failures``. Returns at once; the slot reads ``retired`` once its
        worker is reaped. Retiring a slot already retired or stopped does nothing; the
        last slot retired leaves the pool exhausted (every request waiting then, or
        made later, fails with ``PoolExhausted``).
        Raises ``PoolExhausted``/``PoolClosed`` if the pool is not open, and
        ``IndexError`` for a slot that is not one of the pool's: a negative number too,
        which Python's indexing would otherwise take as counted from the end."""
        self._require_open()
        if not 0 <= slot < len(self._slots):
            raise IndexError(f"no slot {slot}: the pool's slots are 0 to {len(self._slots) - 1}")
        self._slots[slot].retire(reason)

    async def state_changed(self) -> None:
        """Return once some slot's state (``WorkerStats.state``) changes after the call: a
        worker becomes ready, fails, is restarted or retired. For a watcher of the slots
        that has nothing to do until then (``cli.progress.watch_pool``): waiting here
        costs no wake-up while the workers count."""
        await self._changed.wait()

    @property
    def stats(self) -> PoolStats:
        """A snapshot of the pool and of each slot (read inside ``trio.run``: the
        slots' ``state_s`` reads Trio's clock). Never raises there, open or closed."""
        workers = tuple(slot.stats() for slot in self._slots)
        return PoolStats(
            size=self.size,
            alive=sum(1 for w in workers if w.state is SlotState.READY),
            in_flight=sum(
                slot.connection.in_flight for slot in self._slots if slot.connection is not None
            ),
            completed=sum(w.chunks for w in workers),
            restarts=sum(w.restarts for w in workers),
            retired=sum(1 for w in workers if w.state is SlotState.RETIRED),
            workers=workers,
            failures=tuple(self._failures),
        )

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"<WorkerPool {self._state} size={s.size} alive={s.alive} in_flight={s.in_flight} "
            f"completed={s.completed} restarts={s.restarts} retired={s.retired}>"
        )

    # ------------------------------------------------------------------ for the public calls

    async def _until_final(self, attempts: Attempts, avoid: frozenset[int] = frozenset()) -> Request:
        """Send ``attempts``' chunk (or ping) until ``Attempts.judge`` calls an outcome
        final; return that request. Raises its error if the outcome is one, and
        ``ChunkFailed`` for a chunk out of attempts (a ping raises its last failure)."""
        while True:
            request = await self._dispatcher.send_and_wait(attempts.chunk, retry=attempts.tried, avoid=avoid)
            outcome = request.outcome
            verdict = attempts.judge(outcome)
            if verdict is Verdict.AGAIN:
                continue
            if not isinstance(outcome, McpiError):
                return request
            if verdict is Verdict.SPENT and attempts.chunk is not None:
                assert request.connection is not None
                raise attempts.failed(await self._why_it_ended(request.connection, outcome))
            raise outcome

    async def _why_it_ended(self, connection: Connection, error: McpiError) -> str:
        """The slot's full account of a failed worker (command, exit status, stderr),
        once it has been reaped; the bare error if that takes too long."""
        with trio.move_on_after(self._shutdown_grace * 2 + 2.0):
            await connection.ended.wait()
        return connection.end_reason or str(error)

    def _require_open(self) -> None:
        if self._state is not PoolState.OPEN:
            if self._exhausted is not None:
                raise PoolExhausted(str(self._exhausted))
            raise PoolClosed(f"the worker pool is {self._state}; use it inside 'async with'")

    # ------------------------------------------------------------------ results

    def _record(self, connection: Connection, chunk: Chunk, result: Result) -> ChunkResult:
        """The dispatcher's ``Record``: the result counts in its slot's totals."""
        return self._slots[connection.slot].record(connection, chunk, result)

    # ------------------------------------------------------------------ what its slots tell it

    def _settled(self, slot: Slot, *, ready: bool) -> None:
        """``SlotOwner``: count a slot as settled (ready once, retired or stopped) for
        ``__aenter__``, which goes on once all are (or, without ``wait_for_all``, one is
        ``ready``)."""
        self._unsettled -= 1
        if self._unsettled == 0 or (ready and not self._wait_for_all):
            self._settled_all.set()

    def _slot_changed(self, slot: Slot) -> None:
        """``SlotOwner``: wake whoever waits in ``state_changed``."""
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    def _worker_ready(self, slot: Slot) -> None:
        """``SlotOwner``: someone is working now, so the retirements held back (see
        ``_slot_retired``) are news after all."""
        for event, fields in self._deferred_warnings:
            log.warning(event, **fields)
        self._deferred_warnings.clear()

    def _worker_failed(self, failure: FailedWorker) -> None:
        """``SlotOwner``: one more worker given up on, for ``PoolStats.failures``."""
        self._failures.append(failure)

    def _slot_retired(self, slot: Slot, fields: dict[str, Any], attempts: int) -> None:
        """``SlotOwner``: log the slot's retirement once per host, at warning level only if
        it is news, and fail every request for good if it was the last slot."""
        host = slot.named_host
        if slot.retire_reason is not None:
            log.warning("worker_retired", **fields)
        elif host is not None and host in self._hosts_warned:
            # Its host's first retired slot gave the warning; siblings fail alike.
            log.info("worker_retired", **fields)
        elif any(s.state is SlotState.READY for s in self._slots):
            log.warning("worker_retired", **fields)
        else:
            # Nobody is working yet: if nobody ever will, PoolExhausted says it all
            # and these warnings would only repeat it.
            self._deferred_warnings.append(("worker_retired", fields))
        if host is not None:
            self._hosts_warned.add(host)
        if all(s.state is SlotState.RETIRED for s in self._slots):
            why = (
                f"every worker failed {attempts} times in a row before doing any work"
                if slot.retire_reason is None
                else "every worker was retired"
            )
            self._exhausted = PoolExhausted(
                f"no worker left: {why}; last failure: {slot.last_failure or slot.retire_reason}"
            )
            self._dispatcher.close(self._exhausted)
