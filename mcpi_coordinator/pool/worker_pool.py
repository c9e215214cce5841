"""The persistent Trio pool: spawn, handshake, dispatch, recover, close.

    async with WorkerPool(size=4) as pool:
        result = await pool.sample(Chunk(seed=1, stream=0, points=10_000_000))
        async with pool.imap_unordered(chunks) as results:
            async for result in results:
                ...

How it fits together:

- **Slots.** The pool has ``size`` slots. Each slot is one supervisor task that
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
  task timeout gets ``WorkerFailure``; ``sample`` then simply sends it again on the
  next free lane. Chunks are deterministic, so a retried chunk counts the same.
- **Cancellation.** Cancelling a caller of ``sample`` sends ``cancel`` for its
  request. Leaving ``async with`` stops every slot: shutdown → close stdin → grace →
  SIGTERM → SIGKILL, and returns only once every worker process has been reaped.
  The slots run shielded from the caller's cancellation for exactly that reason:
  the escalation must run to the end with every pipe task still alive, however the
  block was left (an error, Ctrl-C, a deadline).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, Final, Self

import trio

from mcpi_coordinator import __version__, logs
from mcpi_coordinator.chunks import Attempts, Chunk, ChunkResult
from mcpi_coordinator.connection.worker_connection import WorkerConnection
from mcpi_coordinator.errors import (
    McpiError,
    PoolClosed,
    PoolExhausted,
    RequestFailed,
    WorkerFailure,
    describe_exit,
    worker_failures,
)
from mcpi_coordinator.launch.local import (
    command_launcher,
    default_max_starting,
    default_worker_command,
    describe_command,
)
from mcpi_coordinator.launch.transport import Launcher, StartLimiter, WorkerProcess
from mcpi_coordinator.pool.batch import Batch
from mcpi_coordinator.pool.dispatch import Connection, Dispatcher
from mcpi_coordinator.pool.stats import FailedWorker, PoolState, PoolStats, SlotState, WorkerStats
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


FAILED_WORKER_GRACE_S: Final[float] = 0.1
"""How long a failed worker gets to exit by itself before SIGTERM: most failures (a
crash, a closed stdout) already were exits, and their status is then reported as such."""

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


# --------------------------------------------------------------------------- slots


class _Slot:
    """Mutable state of one slot, owned by its supervisor task."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._state = SlotState.QUEUED
        self.state_since: float | None = None
        """Trio's clock when ``state`` last changed (None: not since the pool started)."""
        self.failed_starts = 0
        """Starts in a row that failed before the worker did any work."""
        self.connection: WorkerConnection | None = None
        self.host: str | None = None
        self.pid: int | None = None
        self.chunks = 0
        self.points = 0
        self.busy_s = 0.0
        self.restarts = 0
        self.jobs = 1
        self.last_failure: str | None = None
        self.failed = 0
        self.last_pid: int | None = None
        """The pid of its last worker, kept after the worker is gone (for its failure)."""
        self.welcomed = False
        """Its current (or last) worker has sent its welcome."""
        self.unreported: list[dict[str, Any]] = []
        """Its failed starts not yet shown as warnings (``WorkerPool._given_up``)."""
        self.implementations: dict[str, str] = {}
        self.retire_reason: str | None = None
        """Set by ``WorkerPool.retire``: the slot stops for good once its worker has."""
        self.stop_scope: trio.CancelScope | None = None
        self.start_permit: StartLimiter | None = None
        """Held from its turn to start until the welcome (or the start failing)."""
        self.settled = False
        """Ready once, retired or stopped: ``WorkerPool.__aenter__`` waits for all."""

    def retiring(self) -> bool:
        """``WorkerPool.retire`` asked for it. A method, not an attribute test, because
        the request may come while this slot's supervisor awaits (and a type checker
        would otherwise carry what it saw before the await past it)."""
        return self.retire_reason is not None

    @property
    def state(self) -> SlotState:
        return self._state

    @state.setter
    def state(self, value: SlotState) -> None:
        self._state = value
        self.state_since = trio.current_time()

    def stats(self) -> WorkerStats:
        now = trio.current_time()
        return WorkerStats(
            slot=self.index,
            state=self.state,
            pid=self.pid,
            host=self.host,
            chunks=self.chunks,
            points=self.points,
            busy_s=self.busy_s,
            restarts=self.restarts,
            jobs=self.jobs,
            implementations=dict(self.implementations),
            attempt=self.failed_starts + 1,
            state_s=0.0 if self.state_since is None else now - self.state_since,
            failed=self.failed,
        )


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
    the ``hello``.

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
        self._launcher = launcher
        self._pipeline_depth = pipeline_depth
        self._startup_timeout = startup_timeout
        self._task_budget: Callable[[int], float] = (
            default_task_timeout if task_timeout is None else (lambda _points: task_timeout)
        )
        self._max_start_attempts = max_start_attempts
        self._max_chunk_attempts = max_chunk_attempts
        self._shutdown_grace = shutdown_grace
        self._backoff_s = backoff_s
        self._client = client
        self._slots = [_Slot(i) for i in range(size)]
        if starting_limits is None:
            starting_limits = [trio.CapacityLimiter(max_starting or default_max_starting())] * size
        self._starting_limits = list(starting_limits)
        self._dispatcher = Dispatcher(record=self._record, slots=size)
        self._completed = 0
        self._restarts = 0
        self._unsettled = size  # slots that are neither ready once nor retired
        self._wait_for_all = wait_for_all
        self._settled = trio.Event()
        self._deferred_warnings: list[tuple[str, dict[str, Any]]] = []
        self._slot_hosts = list(slot_hosts) if slot_hosts is not None else [None] * size
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
            nursery.start_soon(self._run_slot, slot, name=f"mcpi slot {slot.index}")
        try:
            await self._settled.wait()
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
            if slot.stop_scope is not None:
                slot.stop_scope.cancel()

    def _closing(self) -> bool:
        """A method for the reason ``_Slot.retiring`` is one: closing starts meanwhile."""
        return self._state in (PoolState.CLOSING, PoolState.CLOSED)

    # ------------------------------------------------------------------ public API

    async def sample(self, chunk: Chunk, *, avoid: Iterable[int] = ()) -> ChunkResult:
        """Count one chunk on the next free worker, retrying on another if one fails;
        return its ``ChunkResult`` (for a range, with ``insides``: each stream's count).

        ``avoid`` names slots whose workers must not compute it (to check a count on a
        different worker). A worker that dies, breaks the protocol or stalls is
        replaced and the chunk sent again; that ``WorkerFailure`` is not raised.

        Raises ``ChunkFailed`` once ``max_chunk_attempts`` workers in a row failed while
        computing it or refused it with a retryable error (a poison chunk);
        ``RequestFailed`` if no worker can take it (no worker offers its kernel or
        accepts its size, or all that do are avoided) or one refuses it for good (a
        worker's non-retryable error, such as ``invalid_request`` for a seed, stream or
        points out of the protocol's range); ``PoolExhausted`` when no worker is left;
        ``PoolClosed`` once the pool is closing or closed; ``trio.Cancelled`` as any
        Trio call does (the worker is sent ``cancel`` and stays in the pool).
        ``Chunk`` does not check its own fields: ``streams`` below 1 raises the
        protocol core's ``LocalProtocolError`` and an integer too wide for 64 bits
        msgpack's ``OverflowError``, both before anything is sent.
        """
        self._require_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        attempts = Attempts(chunk, self._max_chunk_attempts)
        avoided = frozenset(avoid)
        while True:
            request = await self._dispatcher.send_and_wait(chunk, retry=attempts.tried, avoid=avoided)
            outcome = request.outcome
            if isinstance(outcome, ChunkResult):
                return outcome
            assert isinstance(outcome, McpiError)
            if not isinstance(outcome, RequestFailed | WorkerFailure):
                raise outcome  # PoolClosed, PoolExhausted
            if not attempts.charge(outcome):
                assert request.connection is not None
                raise attempts.failed(await self._why_it_ended(request.connection, outcome))

    async def ping(self) -> int:
        """Send the protocol's cheapest request, ``ping``, through the pool and wait
        for its ``pong``; return the slot that answered.

        It takes the next worker with room as a chunk does, so its round trip is the
        pool's own cost per request with no work in it (``mcpi bench overhead``), and
        it tells that a worker answers. A worker failing meanwhile is replaced and the
        ping sent again, up to ``max_chunk_attempts`` times; then that failure is
        raised (a ``WorkerFailure``). A worker answering the ping with an ``error``
        raises ``RequestFailed`` at once. Raises ``PoolExhausted``/``PoolClosed`` and
        ``trio.Cancelled`` as ``sample`` does.
        """
        self._require_open()
        await trio.lowlevel.checkpoint_if_cancelled()
        for attempt in range(1, self._max_chunk_attempts + 1):
            request = await self._dispatcher.send_and_wait(None, retry=attempt > 1)
            outcome = request.outcome
            if outcome is None:
                assert request.connection is not None
                return request.connection.slot
            assert isinstance(outcome, McpiError)
            if not isinstance(outcome, WorkerFailure) or attempt == self._max_chunk_attempts:
                raise outcome
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def imap_unordered(self, chunks: Iterable[Chunk]) -> AsyncIterator[AsyncIterator[ChunkResult]]:
        """Run ``chunks`` (any iterable, consumed lazily) and yield results as they finish.

        ``async with pool.imap_unordered(chunks) as results`` gives an async iterator of
        ``ChunkResult``s in completion order. A range (``Chunk.streams`` > 1) may be
        sent in pieces sized for each worker: then each result is one piece's, its
        ``chunk`` naming the streams it counted, and the pieces together cover the range
        once. Chunks are taken from ``chunks`` only as room frees up, in the consumer's
        task, so an exception from ``chunks`` itself is raised by the iterator (or on
        entering the block, for the first ones).

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
        # than wait for the consumer to take their results.
        window = 2 * self.size * self._pipeline_depth
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
            completed=self._completed,
            restarts=self._restarts,
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
        """Count a chunk's result in its slot's totals and the pool's."""
        slot = self._slots[connection.slot]
        # A range is many chunks (streams) in one request: count chunks, not requests.
        slot.chunks += chunk.streams
        slot.points += result.points
        slot.busy_s += result.elapsed_s
        self._completed += chunk.streams
        if result.implementation and slot.implementations.get(chunk.kernel) != result.implementation:
            slot.implementations[chunk.kernel] = result.implementation
            log.info(
                "worker_implementation", slot=slot.index, kernel=chunk.kernel, implementation=result.implementation
            )
        return ChunkResult(
            chunk,
            result.inside,
            result.elapsed_s,
            slot.index,
            connection.pid,
            slot.host,
            result.insides or (),
            result.implementation,
        )

    # ------------------------------------------------------------------ slot supervision

    async def _run_slot(self, slot: _Slot) -> None:
        try:
            with trio.CancelScope(shield=True):
                await self._supervise(slot)
        except BaseException:
            # A bug in one supervisor must not leave the others (shielded) running.
            self._begin_close()
            raise

    async def _supervise(self, slot: _Slot) -> None:
        failures_in_a_row = 0
        while not self._closing():
            failure, useful = await self._run_worker(slot)
            if useful:
                self._report_failed_starts(slot)  # they were not the slot's end
            if failure is not None:
                # Recorded and shown even when the run is over or the slot retires: a
                # worker given up on is never a silent event.
                self._given_up(slot, failure, useful=useful, warn=not slot.retiring())
            if slot.retiring():
                self._retire(slot, failures_in_a_row)
                return
            if failure is None or self._closing():
                break
            slot.last_failure = failure
            failures_in_a_row = 0 if useful else failures_in_a_row + 1
            slot.failed_starts = failures_in_a_row
            if failures_in_a_row >= self._max_start_attempts:
                self._retire(slot, failures_in_a_row)
                return
            slot.state = SlotState.RESTARTING
            with self._stoppable(slot):
                await trio.sleep(self._backoff_s * 2 ** max(failures_in_a_row - 1, 0))
            if slot.retiring():
                self._retire(slot, failures_in_a_row)
                return
            if self._closing():
                break
            slot.restarts += 1
            self._restarts += 1
        self._report_failed_starts(slot)  # the pool closed before the slot's fate was known
        slot.state = SlotState.STOPPED
        self._settle(slot)

    async def _run_worker(self, slot: _Slot) -> tuple[str | None, bool]:
        """Launch, handshake, serve and finally stop one worker in ``slot``.

        Returns ``(failure, useful)``: a one-line description of why the worker ended
        (``None`` when the pool closed it) and whether it answered any request.
        """
        slot.state = SlotState.QUEUED
        slot.last_pid, slot.welcomed = None, False
        limiter = self._starting_limits[slot.index]
        with self._stoppable(slot):
            await limiter.acquire_on_behalf_of(slot)
            slot.start_permit = limiter
        if slot.start_permit is not limiter:  # the pool closed (or retired it) meanwhile
            return None, False
        slot.state = SlotState.STARTING
        log.debug("worker_launching", slot=slot.index)  # with the others, a start-up's timeline
        process: WorkerProcess | None = None
        failure: str | None = None
        with self._stoppable(slot):
            with trio.move_on_after(self._startup_timeout) as startup:
                try:
                    with worker_failures("starting it"):
                        process = await self._launcher(slot.index)
                except WorkerFailure as error:
                    failure = f"worker {slot.index}: {error}"
            if startup.cancelled_caught:
                failure = f"worker {slot.index} was not started within {self._startup_timeout:g} s"
        if process is None:
            self._end_start(slot)
            return (None if self._closing() else failure), False

        connection = WorkerConnection(
            process,
            slot.index,
            client=self._client,
            task_budget=self._task_budget,
            sink=self._dispatcher.on_events,
        )
        slot.pid = slot.last_pid = process.pid
        async with trio.open_nursery() as pipes:
            pipes.start_soon(connection.run_pipes, name=f"mcpi worker {slot.index} pipes")
            reason: str | None = None
            try:
                reason = await self._serve(slot, connection)
            finally:
                self._end_start(slot)  # no-op unless the welcome never came
                slot.state = SlotState.STOPPING if reason is None else SlotState.RESTARTING
                slot.connection = None
                self._dispatcher.worker_gone(connection)
                # Orderly close: ask nicely first. A failed worker cannot be trusted
                # to listen (hung, speaking garbage): SIGTERM almost at once, then
                # SIGKILL; the moment's wait tells a worker that exited by itself.
                grace = self._shutdown_grace if reason is None else FAILED_WORKER_GRACE_S
                returncode = await connection.stop(grace=grace, term_grace=self._shutdown_grace)
                log.debug("worker_reaped", slot=slot.index, pid=process.pid, returncode=returncode)
                slot.pid = None
                # stderr may still hold the worker's last words (why it died); a
                # grandchild holding the pipe open must not keep us here: bounded.
                with trio.move_on_after(1.0):
                    await connection.stderr_closed.wait()
                pipes.cancel_scope.cancel()
        if reason is not None:
            reason = f"worker {slot.index} ({describe_command(process)}, pid {process.pid}): {reason}"
            # Its exit status says more than a broken pipe: always when it exited by
            # itself (``true`` exits 0), else when our own signals were not what ended it.
            if "exited (" not in reason and (not connection.signalled or returncode != 0):
                reason += f"; {describe_exit(returncode)}"
            tail = connection.stderr_tail()
            if tail:
                reason += f"; stderr: {tail}"
        connection.ended_because(reason)
        return reason, connection.answered > 0

    async def _serve(self, slot: _Slot, connection: WorkerConnection) -> str | None:
        """Handshake, give the dispatcher the worker, and watch it until it fails
        (returns why) or the pool closes (returns None)."""
        reason: str | None = None
        with self._stoppable(slot):
            with trio.move_on_after(self._startup_timeout) as startup:
                try:
                    welcome = await connection.handshake()
                except WorkerFailure as error:
                    return f"{error} (during the handshake)"
                finally:
                    self._end_start(slot)
            if startup.cancelled_caught:
                return f"no welcome within the {self._startup_timeout:g} s start-up timeout"
            slot.state = SlotState.READY
            slot.welcomed = True
            slot.host = welcome.host
            slot.jobs = welcome.jobs
            slot.implementations = dict(zip(welcome.kernels, welcome.implementations, strict=False))
            slot.connection = connection
            self._settle(slot, ready=True)
            self._flush_deferred_warnings()
            # Each of the worker's jobs gets the pipelining depth one worker would.
            depth = min(self._pipeline_depth * welcome.jobs, welcome.max_inflight)
            log.info(
                "worker_ready",
                slot=slot.index,
                pid=welcome.pid,
                host=welcome.host,
                depth=depth,
                jobs=welcome.jobs,
                version=welcome.version,
            )
            self._dispatcher.add_worker(connection, depth, per_job=self._pipeline_depth)
            reason = await self._watch(connection)
        # Still None here if the pool closed it meanwhile: the scope swallowed the cancel.
        return reason  # noqa: RET504 - a return inside the block hides that path from mypy

    async def _watch(self, connection: WorkerConnection) -> str:
        """Wait until the connection breaks, or fail it when a request overruns the
        task timeout (a hung worker answers nothing, so only a clock can tell)."""
        while connection.failure is None:
            with trio.CancelScope() as clock:
                connection.track_stalls(clock)
                await connection.broken.wait()
            # The clock rang. An answer may have come in the same scheduler tick and
            # moved the deadline on: only a request still overdue now is a stall.
            connection.check_stall()
        return connection.failure

    def _end_start(self, slot: _Slot) -> None:
        """The slot's start is over (welcomed or failed): the next in line may start."""
        if slot.start_permit is not None:
            slot.start_permit.release_on_behalf_of(slot)
            slot.start_permit = None

    @contextmanager
    def _stoppable(self, slot: _Slot) -> Iterator[None]:
        """A scope that ``_begin_close`` cancels: what a slot may abandon when closing."""
        with trio.CancelScope() as scope:
            slot.stop_scope = scope
            if self._closing() or slot.retire_reason is not None:
                scope.cancel()
            try:
                yield
            finally:
                slot.stop_scope = None

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
        target = self._slots[slot]
        if target.state in (SlotState.RETIRED, SlotState.STOPPED) or target.retire_reason is not None:
            return
        target.retire_reason = reason
        if target.connection is not None:
            target.connection.fail(f"retired: {reason}")
        elif target.stop_scope is not None:
            target.stop_scope.cancel()  # starting or backing off: stop that now

    def _given_up(self, slot: _Slot, reason: str, *, useful: bool, warn: bool) -> None:
        """Record a worker the pool gave up on, and say so in one warning line (``warn``
        False: ``_retire``'s line says it).

        A worker that failed before it answered anything (``useful`` False: it could not
        start, or broke at once) waits for its slot's fate, as it counts toward the slot's
        retirement: if the slot retires, its one ``worker_retired`` line stands for those
        failed starts (one line per host, and none at all when no worker is left, where
        ``PoolExhausted`` says it); if a later worker of the slot answers, or the pool
        closes first, each gets its own warning then."""
        slot.failed += 1
        host = self._slot_hosts[slot.index]
        record = FailedWorker(slot.index, slot.last_pid, host or slot.host, reason, slot.welcomed)
        self._failures.append(record)
        fields: dict[str, Any] = {"slot": slot.index, "pid": record.pid, "reason": reason}
        if host is not None:
            fields["host"] = host
        if not warn:
            log.info("worker_failed", **fields)
        elif useful or self._closing():
            log.warning("worker_failed", **fields)
        else:
            slot.unreported.append(fields)

    def _report_failed_starts(self, slot: _Slot) -> None:
        """The slot's failed starts were not its end (see ``_given_up``): one warning each."""
        for fields in slot.unreported:
            log.warning("worker_failed", **fields)
        slot.unreported.clear()

    def _retire(self, slot: _Slot, attempts: int) -> None:
        for unreported in slot.unreported:  # the one warning below stands for them
            log.info("worker_failed", **unreported)
        slot.unreported.clear()
        slot.state = SlotState.RETIRED
        slot.connection = None
        self._dispatcher.forget_slot(slot.index)
        fields: dict[str, Any] = {"slot": slot.index, "attempts": attempts, "reason": slot.last_failure}
        if slot.retire_reason is not None:
            fields = {"slot": slot.index, "reason": slot.retire_reason}
        host = self._slot_hosts[slot.index]
        if host is not None:
            fields["host"] = host
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
        self._settle(slot)

    def _flush_deferred_warnings(self) -> None:
        for event, fields in self._deferred_warnings:
            log.warning(event, **fields)
        self._deferred_warnings.clear()

    def _settle(self, slot: _Slot, *, ready: bool = False) -> None:
        """Count a slot as settled (ready once, retired or stopped) for ``__aenter__``,
        which goes on once all are (or, without ``wait_for_all``, one is ``ready``)."""
        if slot.settled:
            return
        slot.settled = True
        self._unsettled -= 1
        if self._unsettled == 0 or (ready and not self._wait_for_all):
            self._settled.set()
