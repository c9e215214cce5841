"""One slot of the pool: the life of its workers, one at a time.

A ``Slot`` runs as one supervisor task (``Slot.run``): it waits for its turn to start
(its ``StartLimiter``), launches a worker, completes the handshake within the start-up
timeout, gives the ready worker to the dispatcher, and watches it until it fails or the
pool closes; then it stops and reaps it, and launches a replacement after a back-off. A
slot whose workers keep failing before doing any useful work retires after
``max_start_attempts`` starts in a row. What a slot decides alone is here; what needs
the whole pool (is anyone ready? was this host warned about already? is every slot
gone?) it asks of its owner, the ``SlotOwner`` (``WorkerPool``).

The supervisor runs shielded from the caller's cancellation: stopping a worker
(shutdown → close stdin → grace → SIGTERM → SIGKILL) must run to its end with every
pipe task alive, however the pool's block was left. What a slot may abandon when the
pool closes or retires it (waiting for its turn, a launch, a handshake, a back-off,
watching a worker) runs in a ``_stoppable`` scope that ``Slot.stop`` cancels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from mcpi_coordinator import logs
from mcpi_coordinator.connection.failures import describe_exit, not_frames, worker_failures
from mcpi_coordinator.connection.worker_connection import KILL_WAIT_S, WorkerConnection
from mcpi_coordinator.errors import WorkerFailure
from mcpi_coordinator.launch.local import describe_command
from mcpi_coordinator.launch.transport import Launcher, StartLimiter, WorkerProcess
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.pool.dispatch import Connection, Dispatcher
from mcpi_coordinator.pool.stats import FailedWorker, SlotState, WorkerStats
from mcpi_worker.protocol import Result

log = logs.get_logger("mcpi.pool")

LEFT_RUNNING: Final[str] = f"left running: not gone {KILL_WAIT_S:g} s after SIGKILL"
"""What is said of a worker that ``WorkerConnection.stop`` had to leave running."""

FAILED_WORKER_GRACE_S: Final[float] = 0.1
"""How long a failed worker gets to exit by itself before SIGTERM: most failures (a
crash, a closed stdout) already were exits, and their status is then reported as such."""


@dataclass(frozen=True, slots=True)
class SlotSettings:
    """How every slot of one pool starts, serves and stops its workers (the
    ``WorkerPool`` arguments of the same names)."""

    launcher: Launcher
    client: str
    task_budget: Callable[[int], float]
    pipeline_depth: int
    startup_timeout: float
    max_start_attempts: int
    shutdown_grace: float
    backoff_s: float
    expected_points: int | None = None


class SlotOwner(Protocol):
    """What a slot needs of its pool: the decisions that take every slot into account.
    Each is called from the slot's supervisor task and returns at once."""

    def _closing(self) -> bool:
        """The pool is closing or closed: start nothing more."""

    def _begin_close(self) -> None:
        """Stop every slot (a slot's supervisor failed: the others must not run on)."""

    def _settled(self, slot: Slot, *, ready: bool) -> None:
        """``slot`` is settled for good (ready once, retired or stopped); called once."""

    def _worker_ready(self, slot: Slot) -> None:
        """``slot``'s worker was welcomed and is about to take work."""

    def _worker_failed(self, failure: FailedWorker) -> None:
        """A worker of a slot was given up on (``PoolStats.failures``)."""

    def _slot_retired(self, slot: Slot, fields: dict[str, Any], attempts: int) -> None:
        """``slot`` retired: log its ``worker_retired`` line (``fields``) as the pool sees
        fit, and end the pool's service if no slot is left (``attempts``: its failed
        starts in a row)."""

    def _slot_changed(self, slot: Slot) -> None:
        """``slot``'s ``state`` has just changed (for whoever waits for that)."""


class Slot:
    """One slot: its worker's life, run by ``run`` in a task of its own, and the totals of
    all its workers. The pool reads its state; only its supervisor changes it, but for
    ``retire`` and ``stop``, which ask it to."""

    def __init__(
        self,
        index: int,
        owner: SlotOwner,
        dispatcher: Dispatcher,
        settings: SlotSettings,
        limiter: StartLimiter,
        named_host: str | None,
    ) -> None:
        self.index = index
        self.named_host = named_host
        """The host the pool was told this slot's workers run on (None: here)."""
        self._owner = owner
        self._dispatcher = dispatcher
        self._settings = settings
        self._limiter = limiter
        self._state = SlotState.QUEUED
        self.state_since: float | None = None
        """Trio's clock when ``state`` last changed (None: not since the pool started)."""
        self.failed_starts = 0
        """Starts in a row that failed before the worker did any work."""
        self.connection: WorkerConnection | None = None
        """Its worker's connection while the worker is ready."""
        self.host: str | None = None
        """The host its latest welcomed worker said it runs on."""
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
        """Its failed starts not yet shown as warnings (``_given_up``)."""
        self.implementations: dict[str, str] = {}
        self.retire_reason: str | None = None
        """Set by ``retire``: the slot stops for good once its worker has."""
        self._stop_scope: trio.CancelScope | None = None
        self._start_permit: StartLimiter | None = None
        """Held from its turn to start until the welcome (or the start failing)."""
        self._settled = False

    def __repr__(self) -> str:
        return f"<Slot {self.index} {self._state} pid={self.pid}>"

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> SlotState:
        return self._state

    @state.setter
    def state(self, value: SlotState) -> None:
        self._state = value
        self.state_since = trio.current_time()
        self._owner._slot_changed(self)

    def retiring(self) -> bool:
        """``retire`` asked for it. A method, not an attribute test, because the request
        may come while the supervisor awaits (and a type checker would otherwise carry
        what it saw before the await past it)."""
        return self.retire_reason is not None

    def stats(self) -> WorkerStats:
        """Its ``WorkerStats`` now (reads Trio's clock)."""
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

    def record(self, connection: Connection, chunk: Chunk, result: Result) -> ChunkResult:
        """Count a result of its worker in its totals; return it as the pool's
        ``ChunkResult``. Never raises."""
        # A range is many chunks (streams) in one request: count chunks, not requests.
        self.chunks += chunk.streams
        self.points += result.points
        self.busy_s += result.elapsed_s
        if result.implementation and self.implementations.get(chunk.kernel) != result.implementation:
            self.implementations[chunk.kernel] = result.implementation
            log.info(
                "worker_implementation", slot=self.index, kernel=chunk.kernel, implementation=result.implementation
            )
        return ChunkResult(
            chunk,
            result.inside,
            result.elapsed_s,
            self.index,
            connection.pid,
            self.host,
            result.insides or (),
            result.implementation,
        )

    # ------------------------------------------------------------------ asked by the pool

    def retire(self, reason: str) -> None:
        """Stop for good once its worker has (see ``WorkerPool.retire``); returns at once.
        Nothing happens if it is retired, stopped, or retiring already."""
        if self.state in (SlotState.RETIRED, SlotState.STOPPED) or self.retire_reason is not None:
            return
        self.retire_reason = reason
        if self.connection is not None:
            self.connection.fail(f"retired: {reason}")
        elif self._stop_scope is not None:
            self._stop_scope.cancel()  # starting or backing off: stop that now

    def stop(self) -> None:
        """The pool is closing: abandon what can be abandoned (see the module docstring)."""
        if self._stop_scope is not None:
            self._stop_scope.cancel()

    # ------------------------------------------------------------------ supervision

    async def run(self) -> None:
        """The slot's supervisor: workers one after another, until the pool closes or the
        slot retires. Runs shielded; a bug here stops the whole pool, then propagates."""
        try:
            with trio.CancelScope(shield=True):
                await self._supervise()
        except BaseException:
            # A bug in one supervisor must not leave the others (shielded) running.
            self._owner._begin_close()
            raise

    async def _supervise(self) -> None:
        failures_in_a_row = 0
        while not self._owner._closing():
            failure, useful = await self._run_worker()
            if useful:
                self._report_failed_starts()  # they were not the slot's end
            if failure is not None:
                # Recorded and shown even when the run is over or the slot retires: a
                # worker given up on is never a silent event.
                self._given_up(failure, useful=useful, warn=not self.retiring())
            if self.retiring():
                self._retire(failures_in_a_row)
                return
            if failure is None or self._owner._closing():
                break
            self.last_failure = failure
            failures_in_a_row = 0 if useful else failures_in_a_row + 1
            self.failed_starts = failures_in_a_row
            if failures_in_a_row >= self._settings.max_start_attempts:
                self._retire(failures_in_a_row)
                return
            self.state = SlotState.RESTARTING
            with self._stoppable():
                await trio.sleep(self._settings.backoff_s * 2 ** max(failures_in_a_row - 1, 0))
            if self.retiring():
                self._retire(failures_in_a_row)
                return
            if self._owner._closing():
                break
            self.restarts += 1
        self._report_failed_starts()  # the pool closed before the slot's fate was known
        self.state = SlotState.STOPPED
        self._settle()

    async def _run_worker(self) -> tuple[str | None, bool]:
        """Launch, handshake, serve and finally stop one worker.

        Returns ``(failure, useful)``: a one-line description of why the worker ended
        (``None`` when the pool closed it) and whether it answered any request.
        """
        settings = self._settings
        self.state = SlotState.QUEUED
        self.last_pid, self.welcomed = None, False
        limiter = self._limiter
        with self._stoppable():
            await limiter.acquire_on_behalf_of(self)
            self._start_permit = limiter
        if self._start_permit is not limiter:  # the pool closed (or retired it) meanwhile
            return None, False
        self.state = SlotState.STARTING
        log.debug("worker_launching", slot=self.index)  # with the others, a start-up's timeline
        process: WorkerProcess | None = None
        failure: str | None = None
        with self._stoppable():
            with trio.move_on_after(settings.startup_timeout) as startup:
                try:
                    with worker_failures("starting it"):
                        process = await settings.launcher(self.index)
                except WorkerFailure as error:
                    failure = f"worker {self.index}: {error}"
            if startup.cancelled_caught:
                failure = f"worker {self.index} was not started within {settings.startup_timeout:g} s"
        if process is None:
            self._end_start()
            return (None if self._owner._closing() else failure), False

        connection = WorkerConnection(
            process,
            self.index,
            client=settings.client,
            task_budget=settings.task_budget,
            sink=self._dispatcher.on_events,
            expected_points=settings.expected_points,
        )
        self.pid = self.last_pid = process.pid
        async with trio.open_nursery() as pipes:
            pipes.start_soon(connection.run_pipes, name=f"mcpi worker {self.index} pipes")
            reason: str | None = None
            try:
                reason = await self._serve(connection)
            finally:
                self._end_start()  # no-op unless the welcome never came
                self.state = SlotState.STOPPING if reason is None else SlotState.RESTARTING
                self.connection = None
                self._dispatcher.worker_gone(connection)
                # Orderly close: ask nicely first. A failed worker cannot be trusted
                # to listen (hung, speaking garbage): SIGTERM almost at once, then
                # SIGKILL; the moment's wait tells a worker that exited by itself.
                grace = settings.shutdown_grace if reason is None else FAILED_WORKER_GRACE_S
                returncode = await connection.stop(grace=grace, term_grace=settings.shutdown_grace)
                if returncode is not None:
                    log.debug("worker_reaped", slot=self.index, pid=process.pid, returncode=returncode)
                elif reason is None:  # closed on purpose: no failure will say it
                    log.warning("worker_left_running", slot=self.index, pid=process.pid, why=LEFT_RUNNING)
                self.pid = None
                # stderr may still hold the worker's last words (why it died); a
                # grandchild holding the pipe open must not keep us here: bounded.
                with trio.move_on_after(1.0):
                    await connection.stderr_closed.wait()
                pipes.cancel_scope.cancel()
        if reason is not None:
            reason = f"worker {self.index} ({describe_command(process)}, pid {process.pid}): {reason}"
            # Its exit status says more than a broken pipe: always when it exited by
            # itself (``true`` exits 0), else when our own signals were not what ended it.
            if returncode is None:
                reason += f"; {LEFT_RUNNING}"
            elif not connection.exit_reported and (not connection.signalled or returncode != 0):
                reason += f"; {describe_exit(returncode)}"
            tail = connection.stderr_tail()
            if tail:
                reason += f"; stderr: {tail}"
        connection.ended_because(reason)
        return reason, connection.answered > 0

    async def _serve(self, connection: WorkerConnection) -> str | None:
        """Handshake, give the dispatcher the worker, and watch it until it fails
        (returns why) or the pool closes (returns None)."""
        settings = self._settings
        reason: str | None = None
        with self._stoppable():
            with trio.move_on_after(settings.startup_timeout) as startup:
                try:
                    welcome = await connection.handshake()
                except WorkerFailure as error:
                    # A wrong --worker-cmd: what happened, not the broken pipe or the
                    # protocol error that followed from it.
                    said = str(error) if connection.exit_reported else f"{error} (during the handshake)"
                    if (quote := not_frames(connection.stdout_head)) is not None:
                        wrote = f"wrote {quote} on stdout instead of a frame"
                        return f"{wrote} and {said}" if connection.exit_reported else f"{wrote} (during the handshake)"
                    return said
                finally:
                    self._end_start()
            if startup.cancelled_caught:
                return f"no welcome within the {settings.startup_timeout:g} s start-up timeout"
            self.state = SlotState.READY
            self.welcomed = True
            self.host = welcome.host
            self.jobs = welcome.jobs
            self.implementations = dict(zip(welcome.kernels, welcome.implementations, strict=False))
            self.connection = connection
            self._settle(ready=True)
            self._owner._worker_ready(self)
            # Each of the worker's jobs gets the pipelining depth one worker would.
            depth = min(settings.pipeline_depth * welcome.jobs, welcome.max_inflight)
            log.info(
                "worker_ready",
                slot=self.index,
                pid=welcome.pid,
                host=welcome.host,
                depth=depth,
                jobs=welcome.jobs,
                version=welcome.version,
            )
            self._dispatcher.add_worker(connection, depth, per_job=settings.pipeline_depth)
            reason = await _watch(connection)
        # Still None here if the pool closed it meanwhile: the scope swallowed the cancel.
        return reason  # noqa: RET504 - a return inside the block hides that path from mypy

    def _end_start(self) -> None:
        """The slot's start is over (welcomed or failed): the next in line may start."""
        if self._start_permit is not None:
            self._start_permit.release_on_behalf_of(self)
            self._start_permit = None

    @contextmanager
    def _stoppable(self) -> Iterator[None]:
        """A scope that ``stop`` and ``retire`` cancel: what a slot may abandon."""
        with trio.CancelScope() as scope:
            self._stop_scope = scope
            if self._owner._closing() or self.retire_reason is not None:
                scope.cancel()
            try:
                yield
            finally:
                self._stop_scope = None

    # ------------------------------------------------------------------ its ends

    def _given_up(self, reason: str, *, useful: bool, warn: bool) -> None:
        """Record a worker the slot gave up on, and say so in one warning line (``warn``
        False: ``_retire``'s line says it).

        A worker that failed before it answered anything (``useful`` False: it could not
        start, or broke at once) waits for the slot's fate, as it counts toward the slot's
        retirement: if the slot retires, its one ``worker_retired`` line stands for those
        failed starts (one line per host, and none at all when no worker is left, where
        ``PoolExhausted`` says it); if a later worker of the slot answers, or the pool
        closes first, each gets its own warning then."""
        self.failed += 1
        host = self.named_host
        record = FailedWorker(self.index, self.last_pid, host or self.host, reason, self.welcomed)
        self._owner._worker_failed(record)
        fields: dict[str, Any] = {"slot": self.index, "pid": record.pid, "reason": reason}
        if host is not None:
            fields["host"] = host
        if not warn:
            log.info("worker_failed", **fields)
        elif useful or self._owner._closing():
            log.warning("worker_failed", **fields)
        else:
            self.unreported.append(fields)

    def _report_failed_starts(self) -> None:
        """The slot's failed starts were not its end (see ``_given_up``): one warning each."""
        for fields in self.unreported:
            log.warning("worker_failed", **fields)
        self.unreported.clear()

    def _retire(self, attempts: int) -> None:
        for unreported in self.unreported:  # the one warning of the retirement stands for them
            log.info("worker_failed", **unreported)
        self.unreported.clear()
        self.state = SlotState.RETIRED
        self.connection = None
        self._dispatcher.forget_slot(self.index)
        fields: dict[str, Any] = {"slot": self.index, "attempts": attempts, "reason": self.last_failure}
        if self.retire_reason is not None:
            fields = {"slot": self.index, "reason": self.retire_reason}
        if self.named_host is not None:
            fields["host"] = self.named_host
        self._owner._slot_retired(self, fields, attempts)
        self._settle()

    def _settle(self, *, ready: bool = False) -> None:
        if not self._settled:
            self._settled = True
            self._owner._settled(self, ready=ready)


ABSENT_S: Final[float] = 1.0
"""How late a stall clock may ring before the coordinator counts itself as having been
away (a Trio deadline is otherwise met within milliseconds, even on a loaded machine)."""


async def _watch(connection: WorkerConnection) -> str:
    """Wait until the connection breaks, or fail it when a request overruns the task
    timeout (a hung worker answers nothing, so only a clock can tell)."""
    while connection.failure is None:
        with trio.CancelScope() as clock:
            connection.track_stalls(clock)
            await connection.failure_known.wait()
        # The clock rang. An answer may have come in the same scheduler tick and moved
        # the deadline on: only a request still overdue now is a stall. A clock that rang
        # ABSENT_S or more after its deadline says the coordinator itself was not running
        # (stopped: SIGSTOP, Ctrl-Z; or starved of CPU): its workers are not charged for
        # that time, and the requests in flight are charged from now. Before, every
        # healthy worker was judged stalled, killed and replaced as a coordinator stopped
        # past the task timeout was continued.
        if clock.cancelled_caught and trio.current_time() - clock.deadline >= ABSENT_S:
            connection.coordinator_was_away()
        connection.check_stall()
    return connection.failure
