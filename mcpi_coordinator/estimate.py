"""Estimating π: seeded chunks in, one combined estimate with its uncertainty out.

- ``iter_chunks`` splits N points into chunks of a fixed size, lazily: chunk ``k``
  is stream ``k`` of the seed, so the total count depends only on (seed, points,
  chunk size, kernel), never on the number of workers or the order of completion.
- ``prefix.Prefix`` decides which completed chunks count: the contiguous streams
  0..k−1, so that an early stop reports the count of ``--points k·C`` exactly;
  ``statistics`` holds the formulas and the ``--target-error`` rule.
- ``run_estimate`` drives a ``WorkerPool`` over the streams still missing, and stops
  early on ``max_time`` or once the prefix meets the target, reporting the prefix.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import trio

from mcpi_coordinator.chunks import Chunk, ChunkResult
from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.pool.worker_pool import PoolStats, WorkerPool
from mcpi_coordinator.prefix import Prefix
from mcpi_coordinator.statistics import Z_95, PiStatistics, StopRule, pi_statistics
from mcpi_worker.kernels import DEFAULT_KERNEL

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

DEFAULT_POINTS: Final[int] = 1_000_000_000
DEFAULT_CHUNK_SIZE: Final[int] = 10_000_000
"""40 ms of numpy work (1 s of pure Python): large enough that the ~0.1 ms a request
costs is noise, small enough that workers finish within one chunk of each other, a
progress bar moves smoothly and an early stop wastes little."""


def chunk_count(points: int, chunk_size: int) -> int:
    return -(-points // chunk_size)


def iter_chunks(seed: int, points: int, chunk_size: int, kernel: str = DEFAULT_KERNEL) -> Iterator[Chunk]:
    """Chunk ``k`` is stream ``k``: ``chunk_size`` points each, the last one what remains."""
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


def repeat_command(points: int, seed: int, chunk_size: int, kernel: str) -> str:
    """The plain ``mcpi estimate`` command whose count equals a run of these figures."""
    return f"mcpi estimate --points {points} --seed {seed} --chunk-size {chunk_size} --kernel {kernel}"


@dataclass(frozen=True)
class EstimateResult:
    """One run's answer, with what is needed to repeat it and to plot its convergence.

    ``inside`` and ``points`` are those of the prefix of streams 0..chunks−1, so
    ``repeat_command`` (``--points points``, same seed, chunk size and kernel) gives
    this very count on any pool, also after an early stop.
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

    @property
    def statistics(self) -> PiStatistics:
        return pi_statistics(self.inside, self.points)

    @property
    def pi(self) -> float:
        return self.statistics.pi

    @property
    def error(self) -> float:
        return self.statistics.error

    @property
    def chunks(self) -> int:
        return len(self.chunk_points)

    @property
    def restarts(self) -> int:
        return self.pool.restarts

    @property
    def points_per_s(self) -> float:
        return self.points / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def repeat_command(self) -> str:
        return repeat_command(self.points, self.seed, self.chunk_size, self.kernel)


class NothingCompleted(McpiError):
    """An early stop came before chunk 0 finished: there is no estimate to report."""


OnChunk = Callable[[ChunkResult, Prefix], None]


async def run_estimate(
    pool: WorkerPool,
    *,
    points: int,
    seed: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    kernel: str = DEFAULT_KERNEL,
    max_time: float | None = None,
    target_error: float | None = None,
    on_chunk: OnChunk | None = None,
    started_at: float | None = None,
) -> EstimateResult:
    """Count ``points`` points on ``pool`` and combine them into an estimate of π.

    Stops early, cancelling the chunks still running, after ``max_time`` seconds or
    at the first prefix of streams whose 95% interval's half-width is at most
    ``target_error``; the result is that prefix (``prefix`` module). Raises
    ``NothingCompleted`` if the prefix is empty. ``started_at``
    (``trio.current_time()`` before the pool started) makes ``elapsed_s`` and
    ``max_time`` count worker start-up too, as a user's clock does.
    """
    if points < 1 or chunk_size < 1:
        raise ValueError(f"points and chunk_size must be at least 1, not {points} and {chunk_size}")
    prefix = Prefix(points, chunk_size, StopRule(target_error))
    started = trio.current_time() if started_at is None else started_at
    deadline = math.inf if max_time is None else started + max_time

    def missing_chunks() -> Iterator[Chunk]:
        for stream in prefix.missing():
            yield Chunk(seed, stream, prefix.chunk_points(stream), kernel)

    with trio.move_on_at(deadline) as clock:
        async with pool.imap_unordered(missing_chunks()) as results:
            async for result in results:
                prefix.add(result.chunk.stream, result.inside)
                if on_chunk is not None:
                    on_chunk(result, prefix)
                if prefix.finished:
                    break
    elapsed = trio.current_time() - started
    stopped_early: Stop | None = None
    if prefix.stopped and not prefix.complete:
        stopped_early = Stop.TARGET_ERROR
    elif clock.cancelled_caught and not prefix.finished:
        stopped_early = Stop.MAX_TIME
    if prefix.k == 0:
        beyond = f" ({prefix.beyond} later ones had)" if prefix.beyond else ""
        raise NothingCompleted(
            f"no estimate within {max_time:g} s: chunk 0 had not completed{beyond}; "
            "a smaller --chunk-size would help"
        )
    chunk_points, chunk_inside = prefix.counted()
    return EstimateResult(
        inside=prefix.inside,
        points=prefix.points,
        requested_points=points,
        seed=seed,
        chunk_size=chunk_size,
        kernel=kernel,
        workers=pool.size,
        elapsed_s=elapsed,
        stopped_early=stopped_early,
        pool=pool.stats,
        chunk_points=chunk_points,
        chunk_inside=chunk_inside,
        target_error=target_error,
        target_reached=None if target_error is None else prefix.stopped,
        discarded_chunks=prefix.beyond,
    )
