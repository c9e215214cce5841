"""Requests on their way through the pool: in line for a worker with room, then on it.

The ``Dispatcher`` matches requests with workers. A ready worker has room for
``depth`` requests in flight (the pipelining depth); work is pulled: whenever a worker
has room — it just became ready, or it just answered — the first request in line
that it can serve is sent to it, right there, in the task that learnt of the room
(usually the task that read the worker's answer, which thereby sends the next
request on the same worker with no other task woken, batched with the other answers
of its read into one write). A request that finds a worker with room when it arrives
is sent at once.

Retries go first: a request whose worker died must not queue behind the fresh ones,
where it would land deep in some worker's queue; a worker that dies after every N
requests (a leak, an OOM killer) would then catch the same unlucky chunk over and
over, until it looked like a poison chunk. First in line, a retried chunk is the next
thing some worker computes.

Routing. A request goes only to a worker whose ``welcome`` offers what it needs (its
kernel, its size) and that it does not ``avoid``; one that no worker the pool knows of
can serve fails at once, saying what is missing.

Ranges. A request for a range of streams whose owner can split it (``Request.splitter``)
goes out in pieces sized for the worker that takes each one: as many streams as that
worker computes in about ``TARGET_PIECE_S`` by its own answers so far (before its first,
growing from one stream, ``RAMP``; from whole lane groups, for a worker whose welcome says
it counts the request's kernel in lanes, ``LANE_FIRST_PIECE_POINTS``), and at most a share of what is left of the range
(``SHARE_DIVISOR``), for a worker that counts ranges in SIMD lanes a whole number of lane
groups (``LANE_WIDTH``); a worker speaking protocol version 1 gets one stream at a time. So
per-request overhead stops mattering at any chunk size, while no worker holds more than a
fraction of a second of the run, and a small run is spread over every worker. The end of a
range (``TAIL_S``), once every worker's speed is known, is shared by those speeds instead:
each piece is what its worker should count for every worker to end at once, given what each
one still holds (``_balanced_share``), so the last pieces stay whole lane groups of full
speed and no worker idles while another counts a piece it took too early; the streams left
past the last whole group are shared too, not counted by one worker alone.

No re-entrancy. Each request's one final outcome (a ``ChunkResult``, ``None`` for a
ping's pong, or the ``McpiError`` it ended with) is handed to ``request.deliver``
from a loop over a queue of outcomes (``_deliver_all``), never from inside the code
that learnt of it: a delivery that sends more requests, or learns of more outcomes,
only adds to the queue. So 1000 requests refused one after another cost a loop of
1000 turns, not a recursion 1000 calls deep.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Final, Protocol

import trio

from mcpi_coordinator.errors import McpiError, RequestFailed, WorkerFailure
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.terminal_text import printable
from mcpi_worker.protocol import (
    RANGE_VERSION,
    Answered,
    Broken,
    CoordinatorEvent,
    Error,
    Pong,
    Result,
    Sample,
    Welcome,
)
from mcpi_worker.protocol.admission import Unfit, most_streams, ping_problem, plain_verdict, sending_problem

TARGET_PIECE_S: Final[float] = 0.25
"""Seconds of work one piece of a range should carry for the worker that takes it."""

FIRST_PIECE_POINTS: Final[int] = 1 << 22
"""The most points in a piece sent before the worker's speed is known: a small fraction of
``TARGET_PIECE_S`` at the numpy kernel's speed (measured by ``benchmarks/kernel.py``,
figures in docs/worker.md), so a worker of unknown speed holds little before its first
answer."""

RAMP: Final[int] = 2
"""Until its first answer, a worker's pieces grow from one stream by this factor per piece
sent, up to ``FIRST_PIECE_POINTS``: a worker of unknown speed (a slow host, a slow kernel)
answers its first piece soon, while a deep pipeline (many jobs) still fills with pieces
worth sending. Growing per answer instead kept a large fleet on one-stream pieces for
hundreds of requests a host (``benchmarks/scale.py`` runs such fleets, docs/scale.md)."""

SHARE_DIVISOR: Final[int] = 2
"""A piece carries at most 1/(SHARE_DIVISOR x the pool's jobs) of what is left of its range
(guided scheduling): a small run still reaches every worker, and pieces shrink toward the
end of a range so that no worker is left computing a large piece while the others idle."""

LANE_WIDTH: Final[int] = 16
"""A worker whose answers say ``LANE_IMPLEMENTATION`` counts a range's streams side by side
in groups of lanes padded to a multiple of this many (``LANE_MULTIPLE`` in
``mcpi_worker/kernels/lanes.py``): 9 streams take as long as 16, and 17 as 16 plus one
stream alone. Its pieces, once its speed is known, are rounded to the nearest multiple
(halves down), one group at least, within what it admits: rounding up from 9 only fills
lanes it pays for anyway, rounding down drops a tail it counts at a lower rate, and the
end of a range goes in groups, not in the shrinking shares that would leave lanes idle.
Except the last streams of a range, fewer than one group: rounded up, all of them went to
the first worker to ask, which counted them alone (in one vector of 8 lanes or one stream
after the other, several times slower a stream than full lanes) while the others idled;
they are shared by the share as they are (a 4-stream rest: two single streams each).
Which streams go in which piece never changes a stream's count."""

LANE_IMPLEMENTATION: Final[str] = "numba-fused"
"""The implementation name (``Result.implementation``) of a worker counting in lanes."""

LANE_FIRST_PIECE_POINTS: Final[int] = 1 << 29
"""The most points in a piece sent before the worker's speed is known, to a worker whose
welcome says it counts the request's kernel in lanes (``LANE_IMPLEMENTATION``): its pieces
are then whole lane groups from the first (``LANE_FIRST_PIECE_STREAMS``, growing by
``RAMP``), where one stream, the most ``FIRST_PIECE_POINTS`` allows of a long stream, ran
its single-stream loop, several times slower a point than its lanes (``drive.long_groups``:
1 to 3 streams go one by one). About ``TARGET_PIECE_S`` of the lanes' speed on the
machines measured (docs/worker.md's kernel table), so the worker holds about a target
piece before its first answer. A range of which not one lane group fits starts from one
stream, as for any worker."""

LANE_FIRST_PIECE_STREAMS: Final[int] = 2 * LANE_WIDTH
"""A lane worker's first piece, in streams (fewer where ``LANE_FIRST_PIECE_POINTS`` says):
two lane groups, since a group of 16 lanes takes longer a stream than 32 or more
(``benchmarks/lane_widths.py``; ``benchmarks/tail_balance.py`` shows what the first pieces
cost two workers)."""

TAIL_S: Final[float] = 4 * TARGET_PIECE_S
"""What is left of a range, in seconds of the ready workers' speed together, below which
its pieces are sized for every worker to end at once (``_balanced_share``)."""

BALANCED_WORKERS: Final[int] = 64
"""The most ready workers for which the end of a range is balanced: each piece then looks
at every worker."""

RATE_WEIGHT: Final[float] = 0.3
"""How much of the weight of a worker's older answers each new one takes away: its speed is
the ratio of its answers' points and seconds, each answer weighing ``1 - RATE_WEIGHT`` times
the one after it."""

Outcome = ChunkResult | McpiError | None
"""What became of a request: its result (None: a ping was answered) or its error."""


class Connection(Protocol):
    """What the dispatcher needs of a worker connection: ``WorkerConnection`` is one, the
    tests' fakes others (checked against this by mypy). A connection must be hashable by
    identity: the dispatcher keys its tables by it."""

    @property
    def slot(self) -> int:
        """The pool's slot it serves (stable for its life)."""

    @property
    def pid(self) -> int:
        """Its worker's process id (in the ``ChunkResult``s of its answers)."""

    @property
    def welcome(self) -> Welcome | None:
        """Its worker's welcome, once received: what it offers (kernels, sizes, jobs)."""

    @property
    def usable(self) -> bool:
        """Requests may be sent to it now."""

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""

    @property
    def jobs_shown(self) -> int:
        """The most requests its worker has been seen computing at once."""

    @property
    def ended(self) -> trio.Event:
        """Set once its worker is reaped and ``end_reason`` is final (for the request's
        owner, which says why a chunk failed)."""

    @property
    def end_reason(self) -> str | None:
        """Why its worker ended, in one line (None: closed on purpose)."""

    def holding(self) -> AbstractContextManager[None]:
        """Frames sent inside the block go out together at its end."""

    def send_chunk(self, chunk: Chunk, token: Request) -> int:
        """Send ``chunk`` as a ``sample`` (only while ``usable``), a range counted stream by
        stream; return its request id. Its answer comes back through
        ``Dispatcher.on_events`` carrying ``token``. A ``Chunk``'s fields were checked
        where it was made, and are not again (``CoordinatorEnd.send_checked``)."""

    def send_ping(self, token: Request) -> int:
        """Send a ``ping`` (only while ``usable``); answered as a sample is."""

    def cancel(self, request_id: int) -> None:
        """Give up on a request; its answer still comes, as abandoned."""


class Deliver(Protocol):
    """A request's owner taking its one outcome (``Request.deliver``)."""

    def __call__(self, request: Request, outcome: Outcome, /) -> None:
        """Called once, synchronously, from the dispatcher's delivery loop. Must not
        block or raise; may dispatch more requests."""


class Splitter(Protocol):
    """A request's owner that takes a range in pieces (``Request.splitter``)."""

    def __call__(self, request: Request, streams: int, /) -> Request:
        """Return a new request for ``streams`` streams off the front of ``request``'s
        range (registered with the owner), leaving ``request`` with the rest."""


class Record(Protocol):
    """The pool turning a worker's result into its ``ChunkResult``, and counting it."""

    def __call__(self, connection: Connection, chunk: Chunk, result: Result, /) -> ChunkResult:
        """Called from the delivery path of the task that read the answer; never raises."""


@dataclass(eq=False, slots=True)
class Request:
    """One ``sample`` of ``chunk`` (or a ``ping`` when ``chunk`` is None): in line for a
    worker, then in flight on one, until its outcome is delivered."""

    chunk: Chunk | None
    deliver: Deliver
    """Called once with the outcome (see ``Deliver``)."""
    avoid: frozenset[int] = frozenset()
    """Slots whose workers must not get it (to recompute a chunk elsewhere)."""
    connection: Connection | None = None
    """The worker the request went to, once sent."""
    request_id: int | None = None
    outcome: Outcome = None
    waiting: bool = False
    """In line for a worker."""
    splitter: Splitter | None = None
    """Set by an owner that can take a range in pieces (see ``Splitter``)."""
    retried: bool = False
    """Sent again after it failed: it goes out whole (if the worker takes its size). Split
    again, the piece sent second would carry its failures while the new worker's first
    answer went to the first, and a worker that fails after one answer would be blamed
    for the same streams over and over."""


class Dispatcher:
    """Matches requests with workers that have room. See the module docstring."""

    def __init__(self, record: Record, slots: int = 1, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._record = record
        self._clock = clock
        self._live_slots = set(range(slots))
        """Slots not retired: each computes its welcome's ``jobs`` at once (1 before it)."""
        self._jobs: int | None = None
        """The jobs of all live slots together (None: to be worked out)."""
        self._retries: deque[Request] = deque()
        self._fresh: deque[Request] = deque()
        self._depth: dict[Connection, int] = {}
        self._per_job: dict[Connection, int] = {}
        """Ready workers and how many requests each may have in flight."""
        self._roomy: dict[Connection, None] = {}
        """The ready workers with room for one more request (an ordered set). Invariant:
        none of them can serve any request in line, or it would have been sent."""
        self._known: dict[int, Welcome] = {}
        """The last welcome of every slot that is not retired: who could serve what."""
        self._largest: dict[str, int] | None = None
        """The most points some known slot accepts, by kernel (None: to be worked out).
        Worked out only once every slot has said what it offers, and back to None at any
        change of a welcome or of the live slots."""
        self._rates: dict[Connection, float] = {}
        """Each worker's speed so far: points per second on one of its jobs."""
        self._measured: dict[Connection, tuple[float, float]] = {}
        """The points and seconds of each worker's answers, older ones weighing less
        (``RATE_WEIGHT``): its rate is their ratio."""
        self._blind: dict[Connection, int] = {}
        """Streams in the last piece sent to each worker whose speed is not known yet."""
        self._lanes: set[Connection] = set()
        """The workers whose last answer was counted in lanes (``LANE_IMPLEMENTATION``)."""
        self._out: dict[Connection, int] = {}
        """Points in flight on each worker (sent, not answered yet)."""
        self._speeds: dict[Connection, float] = {}
        """Each ready worker's points per second, all its jobs together, once known."""
        self._since: dict[Connection, float] = {}
        """When each worker last answered, or was sent work with none in flight: since
        then it has been counting what it holds at its speed."""
        self._outcomes: deque[tuple[Request, Outcome]] = deque()
        self._busy = False
        """Inside a public method: outcomes learnt now wait for its delivery loop."""
        self._closed: McpiError | None = None

    def __repr__(self) -> str:
        return (
            f"<Dispatcher workers={len(self._depth)} "
            f"waiting={len(self._retries)}+{len(self._fresh)}>"
        )

    # ------------------------------------------------------------------ workers

    def add_worker(self, connection: Connection, depth: int, per_job: int | None = None) -> None:
        """``connection`` is ready (welcomed): give it up to ``depth`` requests in flight,
        and, with ``per_job``, no more than ``per_job`` for each job it has shown it
        computes at once (``CoordinatorEnd.jobs_shown``): a welcome claiming 1024 jobs
        does not take every request in line before it has computed two at once."""
        outer = self._begin()
        try:
            assert connection.welcome is not None
            self._depth[connection] = depth
            if per_job is not None:
                self._per_job[connection] = per_job
            self._known[connection.slot] = connection.welcome
            self._largest = self._jobs = None
            with connection.holding():  # the requests waiting for it go out in one write
                self._fill(connection)
            if self._all_known():
                # They waited to hear from every slot; and a replacement's welcome may offer
                # less than its slot's last one did (another kernel, a smaller max_points or
                # max_frame): a request only that one served would wait in line for ever.
                self._refuse_unservable()
        finally:
            self._end(outer)

    def lanes(self, unready: int) -> int:
        """Requests the pool's workers may have in flight at once: each ready worker's
        depth (``add_worker``), and ``unready`` for each slot not retired whose worker is
        not ready."""
        return sum(self._depth.values()) + unready * max(0, len(self._live_slots) - len(self._depth))

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Frames sent to the ready workers inside the block go out at its end, one write
        to each (``Connection.holding``): for a caller that sends many requests at once."""
        with ExitStack() as stack:
            for connection in list(self._depth):
                stack.enter_context(connection.holding())
            yield

    def forget_slot(self, slot: int) -> None:
        """``slot`` is retired: nobody will serve from it again. Requests that only it
        could have served fail now."""
        outer = self._begin()
        try:
            self._known.pop(slot, None)
            self._live_slots.discard(slot)
            self._largest = self._jobs = None
            self._refuse_unservable()
        finally:
            self._end(outer)

    def _refuse_unservable(self) -> None:
        """Fail the requests in line that no slot the pool knows of can serve."""
        for queue in (self._retries, self._fresh):
            for request in list(queue):
                problem = self._unservable(request)
                if problem is not None:
                    queue.remove(request)
                    request.waiting = False
                    self._outcomes.append((request, problem))

    def _all_known(self) -> bool:
        """Every slot that is not retired has said what it offers (welcomed once)."""
        return len(self._known) >= len(self._live_slots)

    def on_events(self, connection: Connection, events: list[CoordinatorEvent]) -> None:
        """The connection's sink: answers become outcomes, a broken connection's
        requests become ``WorkerFailure``s, and the room freed goes to who waits."""
        outer = self._begin()
        try:
            now = self._clock()  # the answers of one read landed together
            outcomes = self._outcomes
            for event in events:
                if type(event) is Answered:
                    request: Request = event.token
                    answer = event.answer
                    self._landed(connection, request, now)
                    if type(answer) is Result:
                        self._note_speed(connection, answer)
                        if not event.abandoned:
                            assert request.chunk is not None  # a sample's answer
                            outcomes.append((request, self._record(connection, request.chunk, answer)))
                    elif not event.abandoned:
                        outcomes.append((request, self._outcome(connection, request, answer)))
                elif isinstance(event, Broken):
                    self.worker_gone(connection)
                    for orphan in event.orphans:
                        if not orphan.abandoned:
                            failure = WorkerFailure(event.reason, was_running=orphan.was_running)
                            self._outcomes.append((orphan.token, failure))
            if connection in self._depth:
                self._fill(connection)
        finally:
            self._end(outer)

    def worker_gone(self, connection: Connection) -> None:
        """``connection`` is closing or closed: send it nothing more."""
        self._depth.pop(connection, None)
        self._per_job.pop(connection, None)
        self._roomy.pop(connection, None)
        self._rates.pop(connection, None)
        self._measured.pop(connection, None)
        self._blind.pop(connection, None)
        self._lanes.discard(connection)
        self._out.pop(connection, None)
        self._since.pop(connection, None)
        self._speeds.pop(connection, None)

    # ------------------------------------------------------------------ requests

    def dispatch(self, request: Request, *, retry: bool = False) -> None:
        """Send ``request`` to a worker with room now, or put it in line (retries first).
        Its outcome comes through ``request.deliver`` in any case, never from inside
        this call unless it is the outermost one."""
        outer = not self._busy  # ``_begin``, without a call per chunk
        self._busy = True
        try:
            request.retried = retry
            if self._closed is not None:
                self._outcomes.append((request, _copy(self._closed)))
            elif self._roomy and self._send_somewhere(request):
                pass  # a worker took it (all of it): one that serves it, so it is servable
            elif (problem := self._unservable(request)) is not None:
                # No worker took any of it: one that took a piece of a range serves the rest.
                self._outcomes.append((request, problem))
            else:
                # By the invariant on _roomy, no request in line could have gone where this
                # one goes now: sending it ahead of them keeps every worker's order fair.
                request.waiting = True
                (self._retries if retry else self._fresh).append(request)
        finally:
            if outer and not self._outcomes:
                self._busy = False  # ``_end`` with nothing to deliver
            else:
                self._end(outer)

    def withdraw(self, request: Request) -> None:
        """The caller gave up: take the request out of line, or abandon it on its worker
        (``cancel`` is sent; the worker's room comes back with its answer)."""
        outer = self._begin()
        try:
            if request.waiting:
                request.waiting = False
                (self._retries if request in self._retries else self._fresh).remove(request)
            elif request.connection is not None and request.request_id is not None:
                request.connection.cancel(request.request_id)
        finally:
            self._end(outer)

    def close(self, error: McpiError) -> None:
        """Deliver ``error`` to every request still in line; refuse new ones with it."""
        outer = self._begin()
        try:
            if self._closed is not None:
                return
            self._closed = error
            self._depth.clear()
            self._per_job.clear()
            self._roomy.clear()
            for queue in (self._retries, self._fresh):
                while queue:
                    request = queue.popleft()
                    request.waiting = False
                    self._outcomes.append((request, _copy(error)))
        finally:
            self._end(outer)

    async def send_and_wait(
        self, chunk: Chunk | None, *, retry: bool = False, avoid: Iterable[int] = ()
    ) -> Request:
        """Dispatch one request and wait for its outcome (``request.outcome``).
        A cancelled caller withdraws it. A checkpoint either way: a cancel point even
        when the outcome came at once (a refusal), as ``trio.Event.wait`` would be."""
        waiter = _Waiter()
        request = Request(chunk, waiter.deliver, frozenset(avoid))
        self.dispatch(request, retry=retry)
        try:
            if waiter.delivered:
                await trio.lowlevel.checkpoint()
            else:
                waiter.task = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(waiter.abort)
        except BaseException:
            if not waiter.delivered:
                self.withdraw(request)
            raise
        return request

    # ------------------------------------------------------------------ matching

    def _fill(self, connection: Connection) -> None:
        """Send waiting requests to ``connection`` while it has room and one it can
        serve; then note whether it still has room."""
        depth = self._depth_now(connection)
        if depth is None:
            return
        # Each request sent takes one of its room: counted here, not asked of the
        # connection again; ``usable`` is, since a send that fails breaks it.
        room = depth - connection.in_flight
        welcome = connection.welcome
        fresh = self._fresh
        while room > 0 and connection.usable:
            request = fresh[0] if fresh and not self._retries else None
            if request is not None and welcome is not None and _serves(welcome, connection.slot, request):
                # The first in line, and no retry ahead of it: no look along the line.
                fresh.popleft()
                request.waiting = False
                queue = fresh
            else:
                # Nothing in line (one request at a time, or more workers than requests): no look.
                found = self._next_for(connection) if self._retries or fresh else None
                if found is None:
                    self._roomy[connection] = None
                    return
                request, queue = found
            chunk = request.chunk
            if chunk is None or chunk.streams == 1 or request.splitter is None:
                piece = request  # what ``_piece_for`` says of it, without the call
            else:
                piece = self._piece_for(connection, request)
                if piece is not request:  # the rest of the range waits where it was
                    request.waiting = True
                    queue.appendleft(request)
            self._send(connection, piece)
            room -= 1
        self._roomy.pop(connection, None)

    def _next_for(self, connection: Connection) -> tuple[Request, deque[Request]] | None:
        """The first request in line (retries first) that ``connection`` may serve, taken
        out of its line, and that line."""
        welcome = connection.welcome
        assert welcome is not None
        for queue in (self._retries, self._fresh):
            for index, request in enumerate(queue):
                if _serves(welcome, connection.slot, request):
                    if index == 0:
                        queue.popleft()
                    else:
                        del queue[index]
                    request.waiting = False
                    return request, queue
        return None

    def _send_somewhere(self, request: Request) -> bool:
        """Send ``request`` (in pieces, for a range) to workers with room that serve it;
        False if some of it is left, still to be sent."""
        while True:
            for connection in self._roomy:  # found first, used after the loop: it may pop
                welcome = connection.welcome
                if welcome is not None and _serves(welcome, connection.slot, request):
                    break
            else:
                return False
            # Each request sent takes one of its ``room``: counted here, not asked of the
            # connection again; ``usable`` is, since a send that fails breaks it.
            room = (self._depth_now(connection) or 0) - connection.in_flight
            while room > 0 and connection.usable:
                piece = self._piece_for(connection, request)
                self._send(connection, piece)
                room -= 1
                if piece is request:
                    if room <= 0 or not connection.usable:
                        self._roomy.pop(connection, None)
                    return True
            self._roomy.pop(connection, None)  # full now; the rest of the range goes on

    def _piece_for(self, connection: Connection, request: Request) -> Request:
        """What of ``request`` goes to ``connection`` now: all of it, or (a range its owner
        can split) the streams this worker computes in about ``TARGET_PIECE_S``."""
        chunk = request.chunk
        if chunk is None or chunk.streams == 1 or request.splitter is None:
            return request
        welcome = connection.welcome
        assert welcome is not None
        most = most_streams(welcome, chunk.stream, chunk.points)
        if most <= 1:  # a worker of protocol version 1 (or one taking one stream at most)
            streams = 1
        else:
            points = max(chunk.points, 1)
            rate = self._rates.get(connection)
            if request.retried:
                streams = max(1, min(chunk.streams, most))
            else:
                if rate is None:
                    wanted = self._blind_piece(connection, welcome, chunk.kernel, points)
                else:
                    wanted = int(TARGET_PIECE_S * rate // points)
                share = self._balanced_share(connection, chunk) if rate is not None else None
                if share is None:
                    share = -(-chunk.streams // (SHARE_DIVISOR * self._pool_jobs()))
                streams = max(1, min(wanted, most, share))
                if rate is not None and connection in self._lanes and chunk.streams >= LANE_WIDTH:
                    streams = _whole_lanes(streams, most)
            if rate is None:
                self._blind[connection] = streams
        if streams >= chunk.streams:
            return request
        return request.splitter(request, streams)

    def _blind_piece(self, connection: Connection, welcome: Welcome, kernel: str, points: int) -> int:
        """Streams of ``points`` each for ``connection`` before its speed is known: one, then
        ``RAMP`` times more per piece sent, up to ``FIRST_PIECE_POINTS``; whole lane groups
        up to ``LANE_FIRST_PIECE_POINTS`` for a worker whose welcome says it counts
        ``kernel`` in lanes (a long stream alone would run its single-stream loop)."""
        before = self._blind.get(connection, 0)
        if _counts_in_lanes(welcome, kernel):
            most = LANE_FIRST_PIECE_POINTS // points // LANE_WIDTH * LANE_WIDTH
            if most >= LANE_WIDTH:
                return min(max(LANE_FIRST_PIECE_STREAMS, RAMP * before), most)
        return max(1, min(RAMP * before, FIRST_PIECE_POINTS // points))

    def _balanced_share(self, connection: Connection, chunk: Chunk) -> int | None:
        """The streams of what is left of ``chunk``'s range that ``connection`` takes for
        every ready worker to end at once: what the ready workers hold and what is left,
        shared by their speeds, less what ``connection`` holds already (one stream at
        least). None while a slot's worker is not ready, or its speed is not known yet, or
        it has not been seen computing as many samples at once as its welcome claims (a
        welcome claiming 1024 jobs): then what it would take is not known either."""
        speed = self._speeds.get(connection)
        if speed is None or len(self._speeds) < len(self._depth) or len(self._depth) < len(self._live_slots):
            return None  # a worker is still starting, or its speed is not known yet
        if len(self._depth) > BALANCED_WORKERS:
            return None  # a fleet: each piece would look at every worker
        speed_total = sum(self._speeds.values())
        if chunk.total_points > speed_total * TAIL_S:
            return None  # far from the end: the share would not bind
        if sum(other.jobs_shown for other in self._depth) < self._pool_jobs():
            return None  # a job some welcome claims has not been seen computing: its speed is not known
        now = self._clock()
        held = {other: self._held(other, now) for other in self._depth}
        end_s = (chunk.total_points + sum(held.values())) / speed_total
        return max(1, -(-int(end_s * speed - held[connection]) // max(chunk.points, 1)))

    def _held(self, connection: Connection, now: float) -> float:
        """Points ``connection`` still has to count of what it was sent, by its speed."""
        out = self._out.get(connection, 0)
        since = self._since.get(connection)
        speed = self._speeds.get(connection, 0.0)
        return out if since is None else max(0.0, out - (now - since) * speed)

    def _landed(self, connection: Connection, request: Request, now: float) -> None:
        """``request``'s answer came (at ``now``): its points are no longer in flight on
        ``connection``."""
        if request.chunk is not None and connection in self._out:
            self._out[connection] -= request.chunk.total_points
            self._since[connection] = now

    def _depth_now(self, connection: Connection) -> int | None:
        """Requests ``connection`` may have in flight now (None: it is not serving)."""
        depth = self._depth.get(connection)
        per_job = self._per_job.get(connection)
        if depth is None or per_job is None:
            return depth
        return min(depth, per_job * connection.jobs_shown)

    def _pool_jobs(self) -> int:
        if self._jobs is None:
            known = self._known
            self._jobs = max(1, sum(known[s].jobs if s in known else 1 for s in self._live_slots))
        return self._jobs

    def _note_speed(self, connection: Connection, result: Result) -> None:
        if result.implementation == LANE_IMPLEMENTATION:
            self._lanes.add(connection)
        elif connection in self._lanes:
            self._lanes.discard(connection)
        if result.points == 0 or result.elapsed_s <= 0:
            return
        # Weighed by their points: a worker's first, one-stream pieces run its slower
        # single-stream loop, and must not hold down the speed its large pieces show.
        points, seconds = self._measured.get(connection, (0.0, 0.0))
        points = points * (1 - RATE_WEIGHT) + result.points
        seconds = seconds * (1 - RATE_WEIGHT) + result.elapsed_s
        self._measured[connection] = (points, seconds)
        self._rates[connection] = points / seconds
        if connection in self._depth:
            self._speeds[connection] = self._rates[connection] * max(1, connection.jobs_shown)

    def _send(self, connection: Connection, request: Request) -> None:
        request.connection = connection
        chunk = request.chunk
        if chunk is None:
            request.request_id = connection.send_ping(request)
            return
        out = self._out.get(connection, 0)
        if not out:
            self._since[connection] = self._clock()
        self._out[connection] = out + chunk.points * chunk.streams
        request.request_id = connection.send_chunk(chunk, request)  # a range: counted per stream

    def _unservable(self, request: Request) -> RequestFailed | None:
        """The error for a request that no slot the pool knows of can serve; None when
        one can, or while some slot has not said what it offers yet (a pool that starts
        work at its first ready worker: one still starting may offer it)."""
        chunk = request.chunk
        if self._largest is None and (not self._known or not self._all_known()):
            return None  # (with ``_largest`` worked out, every slot had said, and still has)
        if chunk is None:  # a ping: refused only by a max_frame too small for it
            problems = [ping_problem(welcome) for welcome in self._known.values()]
            if not problems or None in problems:
                return None
            return RequestFailed(f"no worker can take a ping: {problems[0]}")
        if not request.avoid and (chunk.streams == 1 or request.splitter is not None):
            # The common case, without a look at every slot.
            if self._largest is None:
                self._largest = {}
                for welcome in self._known.values():
                    for kernel in welcome.kernels:  # plain_verdict grows no truer with fewer points
                        if plain_verdict(welcome, kernel, welcome.max_points):
                            self._largest[kernel] = max(self._largest.get(kernel, 0), welcome.max_points)
            if chunk.points <= self._largest.get(chunk.kernel, -1):
                return None
        problems = []
        avoided = []
        for slot, welcome in self._known.items():
            problem = _problem(welcome, chunk, splittable=request.splitter is not None)
            if problem is None and slot not in request.avoid:
                return None
            if problem is None:
                avoided.append(slot)
            else:
                problems.append(problem)
        if not problems:
            return RequestFailed(f"every worker that could take it is avoided (slots {sorted(avoided)})")
        if avoided:
            return RequestFailed(f"no worker can take it: slots {sorted(avoided)} are avoided, and {problems[0]}")
        return RequestFailed(f"no worker can take it: {problems[0]}")

    # ------------------------------------------------------------------ outcomes

    def _outcome(self, connection: Connection, request: Request, answer: Result | Pong | Error) -> Outcome:
        if isinstance(answer, Result):
            assert request.chunk is not None
            return self._record(connection, request.chunk, answer)
        if isinstance(answer, Pong):
            return None
        return RequestFailed(
            f"worker {connection.slot} refused the request: {answer.code}: {answer.message}",
            retryable=answer.retryable,
        )

    def _begin(self) -> bool:
        """Enter a public method; True for the outermost one, which delivers."""
        if self._busy:
            return False
        self._busy = True
        return True

    def _end(self, outer: bool) -> None:
        """Leave a public method: the outermost hands out every outcome learnt, in order,
        including those its deliveries lead to (see the module docstring)."""
        if not outer:
            return
        try:
            while self._outcomes:
                request, outcome = self._outcomes.popleft()
                request.deliver(request, outcome)
        finally:
            self._busy = False


class _Waiter:
    """One caller of ``send_and_wait``, parked until its request's outcome is delivered:
    what a ``trio.Event`` and a closure did, without the Event's set of waiters (there is
    one waiter) and its wrappers, on the path of every request sent one at a time."""

    __slots__ = ("delivered", "task")

    def __init__(self) -> None:
        self.delivered = False
        self.task: trio.lowlevel.Task | None = None
        """The parked caller, until it is woken or its wait is cancelled."""

    def deliver(self, request: Request, outcome: Outcome) -> None:
        """The request's ``Deliver``: keep the outcome and wake the caller if it waits."""
        request.outcome = outcome
        self.delivered = True
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        """The caller's wait is cancelled: it is no longer there to wake (it withdraws its
        request, unless the outcome came first)."""
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED


def _whole_lanes(streams: int, most: int) -> int:
    """``streams`` rounded to the nearest multiple of ``LANE_WIDTH`` (halves down, one at
    least), but no more than ``most`` (what the worker admits); ``streams`` as it is when
    the worker admits fewer than ``LANE_WIDTH``."""
    rounded = max(LANE_WIDTH, (streams + LANE_WIDTH // 2 - 1) // LANE_WIDTH * LANE_WIDTH)
    if rounded > most:
        rounded = most // LANE_WIDTH * LANE_WIDTH
    return rounded if rounded > 0 else streams


def _counts_in_lanes(welcome: Welcome, kernel: str) -> bool:
    """The welcome says the worker counts ``kernel`` in lanes now (``implementations``,
    optional: a worker that does not say is not taken to)."""
    if not welcome.implementations or kernel not in welcome.kernels:
        return False
    return welcome.implementations[welcome.kernels.index(kernel)] == LANE_IMPLEMENTATION


def _serves(welcome: Welcome, slot: int, request: Request) -> bool:
    chunk = request.chunk
    if chunk is None:
        return slot not in request.avoid and ping_problem(welcome) is None
    if not request.avoid and chunk.streams == 1:
        # The hot path: one stream, no one avoided, a worker whose frames fit any plain sample.
        verdict = plain_verdict(welcome, chunk.kernel, chunk.points)
        if verdict is not None:
            return verdict
    if slot in request.avoid:
        return False
    return _problem(welcome, chunk, splittable=request.splitter is not None) is None


def _problem(welcome: Welcome, chunk: Chunk, *, splittable: bool) -> str | None:
    """Why a worker with this ``welcome`` cannot take ``chunk`` (in pieces of one stream
    or more, if ``splittable``), or None: the protocol's ``sending_problem`` for the first
    sample of it that would go out, put in the pool's words. The worker's own words in it
    (its name, its kernels' names) are shown escaped: the message may reach a terminal."""
    sample = _first_sample(chunk if not splittable else replace(chunk, streams=1))
    problem = sending_problem(welcome, sample)
    if problem is None:
        return None
    worker = printable(welcome.worker)
    if isinstance(problem, str):
        return f"{worker} cannot take it: {problem}"
    if problem.rule is Unfit.KERNEL:
        offered = printable(", ".join(welcome.kernels)) or "none"
        return f"no worker offers kernel {chunk.kernel!r} ({worker} offers {offered})"
    if problem.rule is Unfit.POINTS:
        return f"{worker} accepts at most {welcome.max_points} points per request, not {sample.total_points}"
    if problem.rule is Unfit.VERSION:
        return f"a range of streams needs protocol version {RANGE_VERSION} ({worker} speaks {welcome.version})"
    return f"{worker} cannot take it: {printable(problem.message)}"


def _first_sample(chunk: Chunk) -> Sample:
    """The ``sample`` that sends ``chunk`` (a range's count reported per stream), its id
    left at 0: the protocol's checks do not look at it."""
    return Sample(0, chunk.seed, chunk.stream, chunk.points, chunk.kernel,
                  chunk.streams, 1 if chunk.streams != 1 else None)  # fmt: skip


def _copy(error: McpiError) -> McpiError:
    """One instance per delivery: each raise gets its own traceback."""
    return copy.copy(error)
