"""Estimating π: seeded chunks in, one combined estimate with its uncertainty out.

- ``iter_chunks`` splits N points into chunks of a fixed size, lazily: chunk ``k``
  is stream ``k`` of the seed, so the total count depends only on (seed, points,
  chunk size, kernel), never on the number of workers or the order of completion.
- ``prefix.Prefix`` decides which completed chunks count: the contiguous streams
  0..k−1, so that an early stop reports the count of ``--points k·C`` exactly;
  ``statistics`` holds the formulas and the ``--target-error`` rule.
- ``run_estimate`` drives a ``WorkerPool`` over the streams still missing, and stops
  early on ``max_time`` or once the prefix meets the target, reporting the prefix.
  With a ``part`` (``parts`` module) it counts only that part's streams.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

import trio

from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.launch import early
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.pool.stats import PoolStats
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.run.prefix import Prefix
from mcpi_coordinator.run.statistics import Z_95, PiStatistics, StopRule, pi_statistics
from mcpi_worker.constants import DEFAULT_KERNEL

if TYPE_CHECKING:  # each imported where its option is used: a plain run loads none of them (nor sqlite3)
    from mcpi_coordinator.run.checkpoint import Checkpoint
    from mcpi_coordinator.run.parts import Part
    from mcpi_coordinator.run.verify import LocalCounter, Verifier, VerifyStats

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_POINTS",
    "Z_95",
    "EstimateResult",
    "NothingCompleted",
    "PiStatistics",
    "Stop",
    "chunk_count",
    "iter_chunks",
    "pi_statistics",
    "repeat_command",
    "run_estimate",
]

# Defined where the command reads them before it has loaded this module (launch.early).
DEFAULT_POINTS: Final[int] = early.DEFAULT_POINTS
DEFAULT_CHUNK_SIZE: Final[int] = early.DEFAULT_CHUNK_SIZE


def chunk_count(points: int, chunk_size: int) -> int:
    """How many chunks ``iter_chunks`` cuts ``points`` into (the last may be short)."""
    return -(-points // chunk_size)


def iter_chunks(seed: int, points: int, chunk_size: int, kernel: str = DEFAULT_KERNEL) -> Iterator[Chunk]:
    """The chunks of a run of ``points`` points of ``seed``, lazily: chunk ``k`` is stream
    ``k``, with ``chunk_size`` points each, the last one what remains, all of ``kernel``.

    Raises ``ValueError`` (when the first chunk is asked for) if ``chunk_size`` is below
    1. The values are not checked against the protocol's bounds (``Chunk`` says what the
    pool does with one outside them)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    full, rest = divmod(points, chunk_size)
    for stream in range(full):
        yield Chunk(seed=seed, stream=stream, points=chunk_size, kernel=kernel)
    if rest:
        yield Chunk(seed=seed, stream=full, points=rest, kernel=kernel)


class Stop(StrEnum):
    """Why a run stopped before its last chunk (``EstimateResult.stopped_early``)."""

    MAX_TIME = "max_time"
    TARGET_ERROR = "target_error"


def repeat_command(points: int, seed: int, chunk_size: int, kernel: str, part: Part | None = None) -> str:
    """The plain ``mcpi estimate`` command whose count equals a run of these figures."""
    command = f"mcpi estimate --points {points} --seed {seed} --chunk-size {chunk_size} --kernel {kernel}"
    return command if part is None else f"{command} --part {part}"


@dataclass(frozen=True)
class EstimateResult:
    """One run's answer, with what is needed to repeat it and to plot its convergence.

    ``inside`` and ``points`` are those of the prefix of streams 0..chunks−1, so
    ``repeat_command`` (``--points points``, same seed, chunk size and kernel) gives
    this very count on any pool, also after an early stop. In a ``part`` of the run
    they are those of streams first_chunk..first_chunk+chunks−1, the part's own.
    """

    inside: int
    points: int
    requested_points: int
    seed: int
    chunk_size: int
    kernel: str
    workers: int
    elapsed_s: float
    stopped_early: Stop | None
    pool: PoolStats
    chunk_points: array[int]
    """Points of each counted chunk, in stream order."""
    chunk_inside: array[int]
    """Points inside the quarter circle of each counted chunk, same order."""
    target_error: float | None = None
    target_reached: bool | None = None
    """Whether the prefix met ``target_error`` (None without a target). False when
    ``--points`` ran out first, or ``max_time`` came first."""
    discarded_chunks: int = 0
    """Chunks that completed beyond the prefix (past a gap or past the stop): not counted."""
    resumed_chunks: int = 0
    """Chunks taken from a checkpoint rather than computed in this run."""
    resumed_points: int = 0
    """Points of the counted chunks that came from a checkpoint."""
    verification: VerifyStats | None = None
    """What ``verify`` did; None without it."""
    checkpoint: str | None = None
    """The checkpoint file's path, if the run had one."""
    saved_chunks: int = 0
    """Chunks the checkpoint holds at the end (counted or not)."""
    part: Part | None = None
    """The part of the run counted; None for all of it."""
    implementations: tuple[tuple[str, int], ...] = ()
    """(implementation, points) of the chunks this run computed, by what the workers
    said counted them (``numba-fused``, ``numpy``, ...), most points first; chunks
    whose worker did not say are left out."""

    @property
    def part_streams(self) -> range:
        """The streams this run was to count: the whole run's, or its part's."""
        total = chunk_count(self.requested_points, self.chunk_size)
        return range(total) if self.part is None else self.part.streams(total)

    @property
    def first_chunk(self) -> int:
        """The first stream counted: 0, or its part's first."""
        return self.part_streams.start

    @property
    def asked_points(self) -> int:
        """The points this run was to count: ``requested_points``, or its part's."""
        if self.part is None:
            return self.requested_points
        return self.part.points(self.requested_points, self.chunk_size)

    @property
    def statistics(self) -> PiStatistics:
        """The estimate of ``inside``/``points``: π, its standard error, its 95% interval."""
        return pi_statistics(self.inside, self.points)

    @property
    def pi(self) -> float:
        """The estimate of π: 4·inside/points."""
        return self.statistics.pi

    @property
    def error(self) -> float:
        """The estimate minus ``math.pi``."""
        return self.statistics.error

    @property
    def chunks(self) -> int:
        """Chunks counted (the prefix's length)."""
        return len(self.chunk_points)

    @property
    def restarts(self) -> int:
        """Workers started to replace one that failed, over all slots (``PoolStats.restarts``)."""
        return self.pool.restarts

    @property
    def points_per_s(self) -> float:
        """Counted points computed by this run, per second of it."""
        computed = self.points - self.resumed_points
        return computed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def repeat_command(self) -> str | None:
        """The command that gives this count again; None for a part that stopped early
        (a prefix of a part is not a run of its own)."""
        if self.part is None:
            return repeat_command(self.points, self.seed, self.chunk_size, self.kernel)
        if self.stopped_early is not None:
            return None
        return repeat_command(self.requested_points, self.seed, self.chunk_size, self.kernel, self.part)


RANGE_STREAMS: Final[int] = 1 << 16
"""Streams one range chunk of a run covers at most: enough that a chunk object stands for
minutes of a worker's work at small chunk sizes, few enough that an early stop or a
failure never has much of the run in one piece (the pool cuts it up anyway)."""


class NothingCompleted(McpiError):
    """An early stop came before chunk 0 finished: there is no estimate to report."""


OnChunk = Callable[[ChunkResult, Prefix], None]


NO_POOL: Final[PoolStats] = PoolStats(
    size=0, alive=0, in_flight=0, completed=0, restarts=0, retired=0, workers=()
)
"""The pool statistics of a run resumed from a checkpoint that had nothing left to do."""


def resumed_prefix(checkpoint: Checkpoint) -> Prefix:
    """The prefix a checkpoint's chunks make: ``finished`` if no worker is needed."""
    parameters = checkpoint.parameters
    prefix = Prefix(parameters.points, parameters.chunk_size, StopRule(parameters.target_error), parameters.part)
    for stream, inside in checkpoint.stored():
        prefix.add(stream, inside)
    return prefix


async def run_estimate(
    pool: WorkerPool | None,
    *,
    points: int,
    seed: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    kernel: str = DEFAULT_KERNEL,
    max_time: float | None = None,
    target_error: float | None = None,
    on_chunk: OnChunk | None = None,
    started_at: float | None = None,
    checkpoint: Checkpoint | None = None,
    verify: float = 0.0,
    count_locally: LocalCounter | None = None,
    part: Part | None = None,
) -> EstimateResult:
    """Count ``points`` points on ``pool`` and combine them into an estimate of π.

    Stops early, cancelling the chunks still running, after ``max_time`` seconds or
    at the first prefix of streams whose 95% interval's half-width is at most
    ``target_error``; the result is that prefix (``prefix`` module). Raises
    ``NothingCompleted`` if the prefix is empty. ``started_at``
    (``trio.current_time()`` before the pool started) makes ``elapsed_s`` and
    ``max_time`` count worker start-up too, as a user's clock does.

    With a ``checkpoint`` (whose parameters must be these), the chunks it holds are
    counted first and only the missing ones computed; each completed chunk is
    recorded in it, and what is buffered is committed however the run ends. ``pool``
    may be None when the checkpoint's ``resumed_prefix`` is finished already.

    ``verify`` (0 to 1) is the fraction of chunks computed a second time elsewhere and
    compared before they count (``verify`` module); a worker caught giving a wrong
    count is retired and its unchecked chunks computed again. ``count_locally`` is how
    the coordinator counts a chunk itself when no other worker is left to check one
    (None: ``verify.count_here``, a thread; a test under a mock clock passes one that
    counts inline).

    With a ``part``, only that part's streams are counted (and the result is the
    part's count); ``target_error``, a rule over the whole run's prefix, is refused.

    Returns the ``EstimateResult``. Raises:

    - ``ValueError`` for arguments no run can have: ``points`` or ``chunk_size`` below
      1, a ``part`` with a ``target_error``, a ``checkpoint`` whose parameters are not
      these, ``verify`` above 1 (or NaN; 0 or less verifies nothing), or no ``pool``
      while chunks are left to compute;
    - ``NothingCompleted`` when ``max_time`` came before the prefix's first chunk;
    - what the pool raises for the work (``ChunkFailed``, ``RequestFailed``,
      ``PoolExhausted``, ``PoolClosed``: ``WorkerPool.imap_unordered`` says when);
    - with ``verify``, ``VerificationFailed`` when the counts of a chunk disagree and no
      majority settles them (no two agree, or no other source is left to count it);
    - with a ``checkpoint``, ``CheckpointFailed`` when writing to it fails.

    Each of these ``McpiError``s comes out as itself, never inside an
    ``ExceptionGroup``. Cancelling it (or ``max_time``) cancels the chunks in flight.
    """
    if points < 1 or chunk_size < 1:
        raise ValueError(f"points and chunk_size must be at least 1, not {points} and {chunk_size}")
    if part is not None and target_error is not None:
        raise ValueError("a part of a run has no --target-error: the rule stops the whole run's prefix")
    prefix = Prefix(points, chunk_size, StopRule(target_error), part)
    resumed = 0
    if checkpoint is not None:
        from mcpi_coordinator.run.checkpoint import RunParameters

        asked = RunParameters(seed, points, chunk_size, kernel, target_error, part)
        if checkpoint.parameters != asked:
            raise ValueError(f"checkpoint {checkpoint.path} is for {checkpoint.parameters}, not {asked}")
        prefix = resumed_prefix(checkpoint)
        resumed = prefix.completed
    started = trio.current_time() if started_at is None else started_at
    deadline = math.inf if max_time is None else started + max_time
    run = _Run(prefix, seed, kernel, checkpoint, on_chunk)
    resumed_streams = array("q", (stream for stream, _ in prefix.items()))
    try:
        with trio.move_on_at(deadline) as clock:
            if not prefix.finished:  # a resumed run may have nothing left to do
                if pool is None:
                    raise ValueError("a run with chunks left to compute needs a pool")
                await run.compute(pool, verify, count_locally)
    finally:
        if checkpoint is not None:
            checkpoint.commit()  # also on Ctrl-C or a failure: what completed is kept
    elapsed = trio.current_time() - started
    stopped_early: Stop | None = None
    if prefix.stopped and not prefix.complete:
        stopped_early = Stop.TARGET_ERROR
    elif clock.cancelled_caught and not prefix.finished:
        stopped_early = Stop.MAX_TIME
    if prefix.k == 0:
        beyond = f" ({prefix.beyond} later ones had)" if prefix.beyond else ""
        raise NothingCompleted(
            f"no estimate within {max_time:g} s: chunk {prefix.first} had not completed{beyond}; "
            "a smaller --chunk-size would help"
        )
    chunk_points, chunk_inside = prefix.counted()
    counted_end = prefix.first + prefix.k
    resumed_points = sum(prefix.chunk_points(s) for s in resumed_streams if s < counted_end and prefix.has(s))
    return EstimateResult(
        inside=prefix.inside,
        points=prefix.points,
        requested_points=points,
        seed=seed,
        chunk_size=chunk_size,
        kernel=kernel,
        workers=0 if pool is None else pool.size,
        elapsed_s=elapsed,
        stopped_early=stopped_early,
        pool=NO_POOL if pool is None else pool.stats,
        chunk_points=chunk_points,
        chunk_inside=chunk_inside,
        target_error=target_error,
        target_reached=None if target_error is None else prefix.stopped,
        discarded_chunks=prefix.beyond,
        resumed_chunks=resumed,
        resumed_points=resumed_points,
        checkpoint=None if checkpoint is None else str(checkpoint.path),
        saved_chunks=0 if checkpoint is None else checkpoint.saved,
        verification=None if run.verifier is None else run.verifier.stats(),
        part=part,
        implementations=tuple(sorted(run.implementations.items(), key=lambda item: (-item[1], item[0]))),
    )


class _Run:
    """The computing part of ``run_estimate``: hand the missing streams to the pool,
    count what comes back (checked first, with ``verify``), until the prefix is finished."""

    def __init__(
        self, prefix: Prefix, seed: int, kernel: str, checkpoint: Checkpoint | None, on_chunk: OnChunk | None
    ) -> None:
        self.prefix = prefix
        self.seed = seed
        self.kernel = kernel
        self.checkpoint = checkpoint
        self.on_chunk = on_chunk
        self.verifier: Verifier | None = None
        self._redo: deque[int] = deque()
        self._phase: trio.CancelScope | None = None
        self.implementations: dict[str, int] = {}

    async def compute(self, pool: WorkerPool, verify: float, count_locally: LocalCounter | None) -> None:
        if verify <= 0:
            await self._phase_on(pool)  # no check can un-count a chunk: one pass does
            return
        from mcpi_coordinator.run.verify import Verifier, count_here

        count_locally = count_here if count_locally is None else count_locally
        async with _nursery_raising_mcpi_errors() as checks:
            self.verifier = Verifier(
                pool, self.seed, verify, checks, settle=self.settle, forget=self.forget, count_locally=count_locally
            )
            # A pass ends when the prefix is finished or every chunk has been handed
            # out; then the checks still running are waited for. One that condemns a
            # worker un-counts its chunks, so the prefix may be unfinished again.
            while True:
                if not self.prefix.finished:
                    await self._phase_on(pool)
                await self.verifier.wait_idle()
                if self.prefix.finished:
                    return

    async def _phase_on(self, pool: WorkerPool) -> None:
        self._redo.clear()  # this pass's scan of the missing streams finds them again
        with trio.CancelScope() as self._phase:
            async with pool.imap_unordered(self._missing_chunks()) as results:
                async for result in results:
                    if result.implementation:
                        done = self.implementations.get(result.implementation, 0)
                        self.implementations[result.implementation] = done + result.chunk.total_points
                    if self.on_chunk is not None:
                        self.on_chunk(result, self.prefix)
                    if self.verifier is None:
                        self.settle_run(result.chunk.stream, result.stream_counts)
                    else:
                        self.verifier.accept(result)
                    if self.prefix.finished:
                        break

    def _missing_chunks(self) -> Iterator[Chunk]:
        if self.verifier is None:
            yield from self._missing_ranges()
            return
        # A checked chunk goes alone, to be counted again elsewhere; the chunks between
        # the checked ones (known before anything runs) go as ranges, counted side by
        # side as in a run that checks nothing (one request a chunk made a verified run
        # ~3x slower with numba's loops). What a condemned worker had counted comes back
        # through _redo, cut the same way: a liar caught late had counted whole ranges.
        for chunk in self._missing_ranges():
            yield from self._redo_ranges()
            yield from self.verifier.cut(chunk)
        while self._redo and not self.prefix.finished:
            yield from self._redo_ranges()

    def _redo_ranges(self) -> Iterator[Chunk]:
        """The streams waiting in ``_redo`` (taken out now, each once), as the requests of
        a verified run: ranges of consecutive streams, cut by ``Verifier.cut``."""
        assert self.verifier is not None, "only a verified run forgets what it counted"
        streams = sorted(set(self._redo))
        self._redo.clear()
        for chunk in self._as_chunks(consecutive_runs(streams, RANGE_STREAMS)):
            yield from self.verifier.cut(chunk)

    def _missing_ranges(self) -> Iterator[Chunk]:
        """The missing streams as ranges of consecutive full chunks (the pool sends a
        range in pieces sized for each worker), the run's shorter last chunk alone."""
        return self._as_chunks(self.prefix.missing_runs(RANGE_STREAMS))

    def _as_chunks(self, runs: Iterable[range]) -> Iterator[Chunk]:
        """Each run of consecutive streams as one range of full chunks, the run's shorter
        last chunk (the run's last stream) alone."""
        full = self.prefix.chunk_size
        for run in runs:
            short = self.prefix.chunk_points(run[-1]) != full
            if len(run) > short:
                yield Chunk(self.seed, run.start, full, self.kernel, streams=len(run) - short)
            if short:
                yield self._chunk(run[-1])

    def _chunk(self, stream: int) -> Chunk:
        return Chunk(self.seed, stream, self.prefix.chunk_points(stream), self.kernel)

    def settle(self, stream: int, inside: int) -> None:
        """Count a chunk (once: a chunk sent again after its worker left may come twice)."""
        self.settle_run(stream, (inside,))

    def settle_run(self, first: int, insides: Sequence[int]) -> None:
        """Count chunks ``first, first + 1, ...``, each once: at once, unless one of them
        came already (a piece sent again after its worker left), then those still new."""
        fresh: Iterable[tuple[int, int]]
        if self.prefix.has_any(first, len(insides)):
            fresh = [(first + i, inside) for i, inside in enumerate(insides) if not self.prefix.has(first + i)]
            for stream, inside in fresh:
                self.prefix.add(stream, inside)
        else:
            self.prefix.add_run(first, insides)
            fresh = enumerate(insides, start=first)
        if self.checkpoint is not None:
            for stream, inside in fresh:
                self.checkpoint.record(stream, inside)
        if self.prefix.finished and self._phase is not None:
            self._phase.cancel()  # settled by a check, not in the loop: stop the pass

    def forget(self, streams: list[int]) -> None:
        """Un-count these chunks and compute them again."""
        counted = [stream for stream in streams if self.prefix.has(stream)]
        if counted:
            self.prefix.forget(counted)
            if self.checkpoint is not None:
                self.checkpoint.forget(counted)
        self._redo.extend(streams)


def consecutive_runs(streams: Sequence[int], longest: int) -> Iterator[range]:
    """Sorted, distinct ``streams`` as runs of consecutive streams, in order, each at most
    ``longest`` long."""
    start = 0
    for index in range(1, len(streams) + 1):
        if index == len(streams) or streams[index] != streams[index - 1] + 1 or index - start == longest:
            yield range(streams[start], streams[index - 1] + 1)
            start = index


@asynccontextmanager
async def _nursery_raising_mcpi_errors() -> AsyncIterator[trio.Nursery]:
    """A nursery whose ``McpiError`` comes out as itself, not inside an ExceptionGroup:
    callers catch ``McpiError`` whether or not the run had tasks of its own."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        errors = group.subgroup(McpiError)
        if errors is None:
            raise
        first: BaseException = errors
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
