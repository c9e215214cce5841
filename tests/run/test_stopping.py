"""Early stops that reproduce, and a stopping rule whose intervals are honest.

The prefix (``mcpi_coordinator.run.prefix``) makes a stopped run's count a pure function of
(seed, points, chunk size, kernel, target), so its statistics can be measured over many
seeds in this process with ``reference_prefix``; a smaller test proves that the pool
path, on any number of workers and in any completion order, stops at the same k.
"""

from __future__ import annotations

import itertools
import math
import random
import subprocess
import sys
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.run.estimate import EstimateResult, NothingCompleted, run_estimate
from mcpi_coordinator.run.prefix import FEW, Prefix, reference_prefix
from mcpi_coordinator.run.statistics import MIN_EACH_SIDE, StopRule, pi_statistics
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import by_slot, fake_launcher
from mcpi_worker.kernels import count_numpy

# ---------------------------------------------------------------------- the prefix


def test_the_prefix_counts_only_contiguous_streams_whatever_the_order() -> None:
    prefix = Prefix(points=25, chunk_size=10)  # chunks of 10, 10, 5
    assert prefix.total_chunks == 3 and prefix.chunk_points(2) == 5
    prefix.add(2, 4)
    assert (prefix.k, prefix.points, prefix.beyond) == (0, 0, 1)
    assert list(prefix.missing()) == [0, 1]
    prefix.add(0, 8)
    assert (prefix.k, prefix.inside, prefix.points) == (1, 8, 10)
    prefix.add(1, 7)
    assert (prefix.k, prefix.inside, prefix.points, prefix.beyond) == (3, 19, 25, 0)
    assert prefix.complete and prefix.finished and list(prefix.missing()) == []
    points, inside = prefix.counted()
    assert list(points) == [10, 10, 5] and list(inside) == [8, 7, 4]
    with pytest.raises(ValueError, match="already counted"):
        prefix.add(1, 7)
    with pytest.raises(ValueError, match="impossible"):
        Prefix(25, 10).add(2, 6)
    with pytest.raises(ValueError, match="not a chunk"):
        Prefix(25, 10).add(3, 0)


def test_one_arrival_that_fills_a_gap_stops_at_the_first_k_that_meets_the_rule() -> None:
    seed, chunk, eps = 3, 10_000, 5e-3
    reference = reference_prefix(seed, 10**8, chunk, target_error=eps)
    k = reference.k
    counts = {s: count_numpy(seed, s, chunk) for s in range(k + 5)}
    prefix = Prefix(10**8, chunk, StopRule(eps))
    for stream in range(1, k + 5):  # everything but stream 0, which comes last
        prefix.add(stream, counts[stream])
    assert prefix.k == 0 and not prefix.stopped
    prefix.add(0, counts[0])
    assert prefix.stopped and prefix.k == k and prefix.inside == reference.inside
    assert prefix.beyond == 5  # done past the stop: kept aside, not counted
    assert list(prefix.missing()) == []


def test_forgetting_chunks_moves_the_prefix_and_its_stop_back() -> None:
    seed, chunk, eps = 4, 10_000, 5e-3
    reference = reference_prefix(seed, 10**8, chunk, target_error=eps)
    prefix = Prefix(10**8, chunk, StopRule(eps))
    for stream in range(reference.k + 3):
        if not prefix.finished:
            prefix.add(stream, count_numpy(seed, stream, chunk))
    prefix.forget([5, 7])
    assert (prefix.k, prefix.stopped) == (5, False)
    assert list(prefix.missing())[:2] == [5, 7]
    prefix.add(7, count_numpy(seed, 7, chunk))
    prefix.add(5, count_numpy(seed, 5, chunk))
    assert prefix.stopped and (prefix.k, prefix.inside) == (reference.k, reference.inside)


def test_the_rule_never_stops_on_a_degenerate_sample() -> None:
    # 10 points all inside: p̂ = 1, standard error 0, "π = 4 ± 0". Optional stopping at
    # its worst; the rule waits for MIN_EACH_SIDE points on each side of the arc.
    rule = StopRule(target_error=0.5)
    assert pi_statistics(10, 10).half_width == 0
    assert not rule.reached(10, 10) and not rule.reached(1000, 1000) and not rule.reached(0, 50)
    assert rule.reached(1000 - MIN_EACH_SIDE, 1000)
    tiny = reference_prefix(7, 10**6, 1, target_error=0.5)
    assert tiny.stopped and tiny.points - tiny.inside >= MIN_EACH_SIDE
    assert abs(4 * tiny.inside / tiny.points - math.pi) < 1.0


# ---------------------------------------------------------------------- coverage

EPS = 5e-3
COVERAGE_CHUNK = 10_000
SEEDS = 1000


def stopped_coverage(z: float) -> tuple[float, list[int]]:
    """Over SEEDS seeds: how often the stopped run's ``z`` interval covers π, and where
    each stopped (in chunks)."""
    covered, stops = 0, []
    for seed in range(SEEDS):
        prefix = reference_prefix(seed, 10**9, COVERAGE_CHUNK, rule=StopRule(EPS, z))
        assert prefix.stopped
        low, high = pi_statistics(prefix.inside, prefix.points, z).ci95
        covered += low <= math.pi <= high
        stops.append(prefix.k)
    return covered / SEEDS, stops


@pytest.mark.slow
def test_intervals_of_runs_stopped_by_target_error_cover_pi_95_percent_of_the_time() -> None:
    # 1000 runs (fixed seeds: deterministic), each stopped by --target-error 5e-3 on
    # chunks of 1e4 points (~41 chunks, 1.6 s for the lot). Honest coverage is ~0.95
    # with binomial sd 0.007, so [0.925, 0.975] is 3.5 sd wide each way; a rule whose
    # intervals are biased by optional stopping by 2.5 points is caught, as is a 90% or
    # 99% interval (the same harness measures those below).
    coverage, stops = stopped_coverage(z=1.959963984540054)
    assert 0.925 <= coverage <= 0.975, coverage
    # Why it holds: the half-width is nearly a function of n, so every run stops at
    # almost the same n: a fixed-n plan in all but name.
    assert max(stops) - min(stops) <= 2, (min(stops), max(stops))


@pytest.mark.slow
@pytest.mark.parametrize(("z", "expected"), [(1.6448536269514722, 0.90), (2.5758293035489004, 0.99)])
def test_the_coverage_harness_catches_intervals_that_are_not_95_percent(z: float, expected: float) -> None:
    coverage, _ = stopped_coverage(z)
    assert not 0.925 <= coverage <= 0.975
    assert abs(coverage - expected) < 0.025


# ---------------------------------------------------------------------- the pool path

POINTS = 10**8
SEED = 2024


async def pool_estimate(
    workers: int, behaviours: dict[int, FakeBehaviour], points: int = POINTS, **options: Any
) -> EstimateResult:
    outcome: EstimateResult | McpiError
    async with trio.open_nursery() as nursery:
        launcher = fake_launcher(nursery, by_slot(behaviours))
        async with WorkerPool(workers, launcher=launcher) as pool:
            try:
                outcome = await run_estimate(
                    pool, points=points, seed=SEED, chunk_size=COVERAGE_CHUNK, **options
                )
            except McpiError as error:
                outcome = error
    if isinstance(outcome, McpiError):
        raise outcome
    return outcome


def scrambled(workers: int, rng: random.Random) -> dict[int, FakeBehaviour]:
    """Workers of different speeds, one of which crashes: chunks finish out of order."""
    behaviours = {slot: FakeBehaviour(slow=rng.choice([0.01, 0.03, 0.1])) for slot in range(workers)}
    behaviours[0] = FakeBehaviour(slow=0.02, crash_after=rng.randrange(3, 20))
    return behaviours


@pytest.mark.parametrize("workers", [1, 2, 3])
async def test_the_pool_stops_at_the_same_k_as_the_reference_on_any_pool(
    workers: int, autojump_clock: object
) -> None:
    reference = reference_prefix(SEED, POINTS, COVERAGE_CHUNK, target_error=EPS)
    rng = random.Random(workers)
    for _ in range(3):
        with trio.fail_after(600):
            result = await pool_estimate(workers, scrambled(workers, rng), target_error=EPS)
        assert (result.chunks, result.inside) == (reference.k, reference.inside)
        assert result.points == reference.points
        assert result.stopped_early == "target_error" and result.target_reached is True
        assert list(result.chunk_inside) == [count_numpy(SEED, s, COVERAGE_CHUNK) for s in range(reference.k)]
        assert result.repeat_command == (
            f"mcpi estimate --points {reference.points} --seed {SEED} --chunk-size {COVERAGE_CHUNK} "
            "--kernel numpy"
        )


async def test_max_time_reports_the_prefix_and_discards_what_finished_past_a_gap(
    autojump_clock: object,
) -> None:
    # Slot 0 is slow: whenever time runs out it holds a stream the others have passed.
    behaviours = {0: FakeBehaviour(slow=1.0), 1: FakeBehaviour(slow=0.1), 2: FakeBehaviour(slow=0.1)}
    with trio.fail_after(600):
        result = await pool_estimate(3, behaviours, max_time=5.05)
    assert result.stopped_early == "max_time" and result.target_reached is None
    assert result.discarded_chunks > 0
    assert result.inside == sum(count_numpy(SEED, s, COVERAGE_CHUNK) for s in range(result.chunks))
    assert result.points == result.chunks * COVERAGE_CHUNK


async def test_a_target_that_the_points_cannot_reach_is_reported_as_not_reached(
    autojump_clock: object,
) -> None:
    with trio.fail_after(600):
        result = await pool_estimate(2, {}, points=10**6, target_error=1e-9)
    assert result.target_reached is False and result.stopped_early is None
    assert result.points == 10**6 and result.chunks == 100


async def test_max_time_before_chunk_0_completes_is_a_clear_error(autojump_clock: object) -> None:
    no_chunk_0 = "within 1 s: chunk 0 had not completed;"
    with trio.fail_after(600), pytest.raises(NothingCompleted, match=no_chunk_0):
        await pool_estimate(1, {0: FakeBehaviour(slow=10.0)}, max_time=1.0)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("target", [None, 0.05])
def test_counting_ranges_at_once_gives_the_prefix_chunks_one_by_one_give(seed: int, target: float | None) -> None:
    """``Prefix.add_run`` (a range's result, counted at once) against ``add`` one chunk at
    a time, over random ranges arriving in random order, with and without a stop rule."""
    rng = random.Random(seed)
    chunk, total = rng.choice([1, 7, 100]), rng.randint(1, 300)
    points = chunk * total - rng.randint(0, chunk - 1)  # the last chunk may be shorter
    one_by_one, at_once = Prefix(points, chunk, StopRule(target)), Prefix(points, chunk, StopRule(target))
    insides = [rng.randint(0, one_by_one.chunk_points(s)) for s in range(total)]
    cuts = sorted(rng.sample(range(1, total), min(total - 1, rng.randint(0, 12)))) if total > 1 else []
    ranges = list(zip([0, *cuts], [*cuts, total], strict=True))
    rng.shuffle(ranges)
    for start, end in ranges:
        for stream in range(start, end):
            one_by_one.add(stream, insides[stream])
        at_once.add_run(start, insides[start:end])
        state = (at_once.k, at_once.inside, at_once.points, at_once.stopped, at_once.completed)
        assert state == (one_by_one.k, one_by_one.inside, one_by_one.points, one_by_one.stopped, one_by_one.completed)
    assert at_once.counted() == one_by_one.counted()


def test_a_range_with_a_counted_or_impossible_chunk_changes_nothing() -> None:
    prefix = Prefix(1000, 100)
    prefix.add_run(2, [50, 60])
    with pytest.raises(ValueError, match="already counted"):
        prefix.add_run(0, [1, 2, 3])
    with pytest.raises(ValueError, match="chunk 5: 101 inside of 100 points is impossible"):
        prefix.add_run(4, [0, 101])
    with pytest.raises(ValueError, match="not all chunks of this run"):
        prefix.add_run(9, [1, 2])
    assert (prefix.k, prefix.completed, list(prefix.items())) == (0, 2, [(2, 50), (3, 60)])
    prefix.add_run(0, [10, 20])
    assert (prefix.k, prefix.inside, prefix.points) == (4, 140, 400)


@pytest.mark.parametrize("streams", [1, FEW - 3, FEW - 2, FEW + 1, 4 * FEW])
def test_a_range_counts_alike_one_by_one_and_in_c_loops(streams: int) -> None:
    """A range of up to ``FEW`` streams is checked and counted one by one, a longer one by
    the array's C loops: the same counts, the same refusals."""
    prefix = Prefix(points=10 * (streams + 3), chunk_size=10)
    insides = [(7 * s) % 11 for s in range(streams)]  # 0..10
    prefix.add_run(3, insides)  # beyond a gap of 3 chunks
    assert (prefix.k, prefix.completed, prefix.has_any(3, streams), prefix.has_any(0, 3)) == (0, streams, True, False)
    prefix.add_run(0, [1, 2, 3])  # the gap fills: the prefix moves over all of it at once
    assert (prefix.k, prefix.inside, prefix.points) == (streams + 3, 6 + sum(insides), 10 * (streams + 3))
    for bad, at in ((11, streams - 1), (-1, streams // 2)):
        fresh = Prefix(points=10 * streams, chunk_size=10)
        wrong = insides[:at] + [bad] + insides[at + 1 :]
        with pytest.raises(ValueError, match=rf"^chunk {at}: {bad} inside of 10 points is impossible$"):
            fresh.add_run(0, wrong)
        assert fresh.completed == 0


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.integers(1, 400),
    counted=st.sets(st.integers(0, 399)),
    longest=st.integers(1, 50),
    consumed_before_counting=st.integers(0, 5),
)
def test_missing_runs_are_what_missing_gives_a_run_at_a_time(
    chunks: int, counted: set[int], longest: int, consumed_before_counting: int
) -> None:
    """``missing_runs`` (what a run sends as ranges) names exactly the streams ``missing``
    names, in order, in runs of consecutive streams of at most ``longest``; chunks counted
    while the runs are being taken (a checkpoint's, a result that came meanwhile) are not
    named afterwards, as ``missing`` would not name them."""
    prefix, twin = Prefix(chunks * 10, 10), Prefix(chunks * 10, 10)
    early = sorted(stream for stream in counted if stream < chunks)[: len(counted) // 2]
    late = sorted(stream for stream in counted if stream < chunks and stream not in early)
    for stream in early:
        prefix.add(stream, 3)
        twin.add(stream, 3)
    runs = prefix.missing_runs(longest)
    named = [list(run) for run in itertools.islice(runs, consumed_before_counting)]
    for stream in late:
        prefix.add(stream, 3)
        twin.add(stream, 3)
    named += [list(run) for run in runs]
    streams = [stream for run in named for stream in run]
    assert all(1 <= len(run) <= longest and run == list(range(run[0], run[-1] + 1)) for run in named)
    already = [stream for run in named[:consumed_before_counting] for stream in run]
    assert streams == already + [s for s in twin.missing() if not already or s > already[-1]]


def test_the_bookkeeping_of_many_streams_loads_no_numpy() -> None:
    """A run of many small chunks (ranges of thousands of streams) is checked, counted and
    scanned without NumPy in the coordinator: its import was a twentieth of a second of
    such a run (``benchmarks/scaling.py --cold``, chunk size 1e4)."""
    script = (
        "import sys\n"
        "from mcpi_coordinator.run.prefix import Prefix\n"
        "prefix = Prefix(points=10 * 9000, chunk_size=10)\n"
        "prefix.add_run(4000, [3] * 5000)\n"
        "prefix.add_run(0, [4] * 4000)\n"
        "assert prefix.has_any(0, 9000) and (prefix.k, prefix.inside) == (9000, 4 * 4000 + 3 * 5000)\n"
        "assert list(prefix.missing_runs(100)) == []\n"
        "print('numpy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
