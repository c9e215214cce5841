"""Estimation: chunking, statistics (including the interval's coverage), and
run_estimate on in-process fake workers (determinism, early stops)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import trio

from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.run.estimate import (
    EstimateResult,
    NothingCompleted,
    chunk_count,
    iter_chunks,
    pi_statistics,
    run_estimate,
)
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import fake_launcher
from mcpi_worker.kernels import count_numpy


def test_chunks_are_lazy_and_cover_the_points_exactly() -> None:
    huge = iter_chunks(seed=1, points=10**13, chunk_size=10**7)
    assert list(itertools.islice(huge, 3)) == [Chunk(1, s, 10**7) for s in range(3)]
    assert chunk_count(10**13, 10**7) == 10**6
    small = list(iter_chunks(seed=5, points=25, chunk_size=10, kernel="python"))
    assert [(c.stream, c.points, c.kernel) for c in small] == [(0, 10, "python"), (1, 10, "python"), (2, 5, "python")]
    assert chunk_count(25, 10) == 3 and chunk_count(30, 10) == 3
    with pytest.raises(ValueError):
        next(iter_chunks(1, 10, 0))


def test_statistics_formula() -> None:
    stats = pi_statistics(inside=785_398, points=1_000_000)
    p = 0.785398
    assert stats.pi == pytest.approx(4 * p)
    assert stats.std_error == pytest.approx(4 * math.sqrt(p * (1 - p) / 1_000_000))
    assert stats.half_width == pytest.approx(1.959964 * stats.std_error)
    assert stats.error == pytest.approx(4 * p - math.pi)
    assert stats.ci95[0] < stats.pi < stats.ci95[1]
    with pytest.raises(ValueError):
        pi_statistics(0, 0)


def test_the_95_percent_interval_covers_pi_about_95_percent_of_the_time() -> None:
    # 1000 independent small runs (fixed seeds, so the test is deterministic). With
    # the right formula coverage is ~0.95, binomial sd 0.007: [0.925, 0.975] is 3.5 sd
    # wide each way. A missing factor 4 (coverage ~0.44), a 90% quantile (~0.90) or
    # forgetting the square root (~1.0) all fall outside.
    runs = 1000
    covered = 0
    for seed in range(runs):
        inside = count_numpy(seed, 0, 10_000)
        low, high = pi_statistics(inside, 10_000).ci95
        covered += low <= math.pi <= high
    assert 0.925 <= covered / runs <= 0.975


POINTS = 200_000
CHUNK = 7_000  # 29 chunks, the last one short


CORRECT = FakeBehaviour()


async def _estimate(workers: int, behaviour: FakeBehaviour = CORRECT, **options: Any) -> EstimateResult:
    outcome: EstimateResult | McpiError
    async with trio.open_nursery() as nursery:  # where the fakes run
        launcher = fake_launcher(nursery, behaviour)
        async with WorkerPool(workers, launcher=launcher) as pool:
            try:
                outcome = await run_estimate(pool, points=POINTS, seed=99, chunk_size=CHUNK, **options)
            except McpiError as error:
                outcome = error  # raised below, outside the fakes' nursery
    if isinstance(outcome, McpiError):
        raise outcome
    return outcome


async def test_the_count_does_not_depend_on_the_number_of_workers() -> None:
    expected = sum(count_numpy(99, c.stream, c.points) for c in iter_chunks(99, POINTS, CHUNK))
    with trio.fail_after(30):
        one = await _estimate(1)
        three = await _estimate(3)
    for result in (one, three):
        assert result.inside == expected and result.points == POINTS
        assert result.chunks == 29 and result.stopped_early is None
        assert sum(result.chunk_points) == POINTS and sum(result.chunk_inside) == expected
        assert result.chunk_points.typecode == "q"
    assert three.workers == 3 and sum(w.chunks for w in three.pool.workers) == 29
    assert one.pi == pytest.approx(4 * expected / POINTS)
    assert one.error == pytest.approx(one.pi - math.pi)


async def test_target_error_stops_early_with_a_valid_estimate() -> None:
    with trio.fail_after(30):
        result = await _estimate(2, target_error=0.02)
    assert result.stopped_early == "target_error"
    assert result.points < POINTS
    assert result.statistics.half_width <= 0.02
    assert result.chunks == len(result.chunk_inside)


async def test_max_time_stops_early_with_the_completed_chunks(autojump_clock: object) -> None:
    with trio.fail_after(100):
        result = await _estimate(2, FakeBehaviour(slow=1.0), max_time=5.5)
    assert result.stopped_early == "max_time"
    assert 0 < result.points < POINTS
    assert result.chunks == 10  # two workers, one chunk a second each, for 5.5 s
    assert result.elapsed_s == pytest.approx(5.5)


async def test_max_time_before_any_chunk_is_a_clear_error(autojump_clock: object) -> None:
    refusal = r"no estimate within 0\.5 s: chunk 0 had not completed"
    with trio.fail_after(100), pytest.raises(NothingCompleted, match=refusal):
        await _estimate(2, FakeBehaviour(slow=1.0), max_time=0.5)


async def test_run_estimate_refuses_an_empty_run_with_a_clear_error() -> None:
    """points=0 used to fail deep inside with a TypeError from an f-string."""
    from mcpi_coordinator.pool.worker_pool import WorkerPool
    from mcpi_coordinator.run.estimate import run_estimate
    from mcpi_coordinator.testing import FakeBehaviour
    from mcpi_coordinator.testing.inprocess import fake_launcher

    with trio.fail_after(20):
        async with (
            trio.open_nursery() as nursery,
            WorkerPool(1, launcher=fake_launcher(nursery, FakeBehaviour())) as pool,
        ):
            with pytest.raises(ValueError, match="points and chunk_size must be at least 1, not 0"):
                await run_estimate(pool, points=0, seed=1)
