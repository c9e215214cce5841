"""Estimating π: seeded chunks in, one combined estimate with its uncertainty out.

- ``iter_chunks`` splits N points into chunks of a fixed size, lazily: chunk ``k``
  is stream ``k`` of the seed, so the total count depends only on (seed, points,
  chunk size, kernel), never on the number of workers or the order of completion.
- ``Tally`` combines chunk results as they finish and keeps each chunk's
  (points, inside) in completion order, compactly (two ``array('q')``), for
  convergence plots.
- ``pi_statistics`` is the statistics: each point lands inside the quarter circle
  with probability p = π/4, so inside ~ Binomial(n, p), π̂ = 4·inside/n, its standard
  error is 4·sqrt(p̂(1 − p̂)/n), and the 95% interval is π̂ ± 1.96·SE.
- ``run_estimate`` drives a ``WorkerPool`` and stops early on ``max_time`` or once the
  interval's half-width is at most ``target_error``, reporting what completed.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

import trio

from mcpi_coordinator.chunks import Chunk, ChunkResult
from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.pool.worker_pool import PoolStats, WorkerPool
from mcpi_worker.kernels import DEFAULT_KERNEL

DEFAULT_POINTS: Final[int] = 1_000_000_000
DEFAULT_CHUNK_SIZE: Final[int] = 10_000_000
"""40 ms of numpy work (1 s of pure Python): large enough that the ~0.1 ms a request
costs is noise, small enough that workers finish within one chunk of each other, a
progress bar moves smoothly and an early stop wastes little."""

Z_95: Final[float] = 1.959963984540054
"""The standard normal quantile for a two-sided 95% interval."""


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


@dataclass(frozen=True, slots=True)
class PiStatistics:
    pi: float
    std_error: float
    ci95: tuple[float, float]

    @property
    def half_width(self) -> float:
        return (self.ci95[1] - self.ci95[0]) / 2

    @property
    def error(self) -> float:
        """The estimate minus ``math.pi``: what every report calls its error."""
        return self.pi - math.pi


def pi_statistics(inside: int, points: int) -> PiStatistics:
    """π̂ = 4·inside/points with its binomial standard error and 95% interval."""
    if points <= 0:
        raise ValueError("no points: nothing to estimate")
    p = inside / points
    pi = 4.0 * p
    std_error = 4.0 * math.sqrt(p * (1.0 - p) / points)
    half = Z_95 * std_error
    return PiStatistics(pi=pi, std_error=std_error, ci95=(pi - half, pi + half))


@dataclass
class Tally:
    """Running totals, plus every chunk's (points, inside) in completion order."""

    points: int = 0
    inside: int = 0
    chunk_points: array[int] = field(default_factory=lambda: array("q"))
    chunk_inside: array[int] = field(default_factory=lambda: array("q"))

    def add(self, points: int, inside: int) -> None:
        self.points += points
        self.inside += inside
        self.chunk_points.append(points)
        self.chunk_inside.append(inside)

    def statistics(self) -> PiStatistics:
        return pi_statistics(self.inside, self.points)


@dataclass(frozen=True)
class EstimateResult:
    """One run's answer, with what is needed to repeat it and to plot its convergence."""

    inside: int
    points: int
    requested_points: int
    seed: int
    chunk_size: int
    kernel: str
    workers: int
    elapsed_s: float
    stopped_early: str | None
    """``None``, ``"max_time"`` or ``"target_error"``."""
    pool: PoolStats
    chunk_points: array[int]
    """Points of each completed chunk, in completion order."""
    chunk_inside: array[int]
    """Points inside the quarter circle of each completed chunk, same order."""

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


class NothingCompleted(McpiError):
    """An early stop came before any chunk finished: there is no estimate to report."""


async def run_estimate(
    pool: WorkerPool,
    *,
    points: int,
    seed: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    kernel: str = DEFAULT_KERNEL,
    max_time: float | None = None,
    target_error: float | None = None,
    on_chunk: Callable[[ChunkResult, Tally], None] | None = None,
    started_at: float | None = None,
) -> EstimateResult:
    """Count ``points`` points on ``pool`` and combine them into an estimate of π.

    Stops early, cancelling the chunks still running, after ``max_time`` seconds or
    once the 95% interval's half-width is at most ``target_error``; the result then
    covers the chunks that completed. Raises ``NothingCompleted`` if that is none.
    ``started_at`` (``trio.current_time()`` before the pool started) makes
    ``elapsed_s`` and ``max_time`` count worker start-up too, as a user's clock does.
    """
    tally = Tally()
    stopped_early: str | None = None
    started = trio.current_time() if started_at is None else started_at
    deadline = math.inf if max_time is None else started + max_time
    with trio.move_on_at(deadline) as clock:
        async with pool.imap_unordered(iter_chunks(seed, points, chunk_size, kernel)) as results:
            async for result in results:
                tally.add(result.chunk.points, result.inside)
                if on_chunk is not None:
                    on_chunk(result, tally)
                if target_error is not None and tally.statistics().half_width <= target_error:
                    stopped_early = "target_error"
                    break
    if clock.cancelled_caught:
        stopped_early = "max_time"
    elapsed = trio.current_time() - started
    if tally.points == 0:
        raise NothingCompleted(
            f"no chunk completed within {max_time:g} s; a smaller --chunk-size would help"
        )
    return EstimateResult(
        inside=tally.inside,
        points=tally.points,
        requested_points=points,
        seed=seed,
        chunk_size=chunk_size,
        kernel=kernel,
        workers=pool.size,
        elapsed_s=elapsed,
        stopped_early=stopped_early,
        pool=pool.stats,
        chunk_points=tally.chunk_points,
        chunk_inside=tally.chunk_inside,
    )
