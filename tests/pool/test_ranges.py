"""Stream ranges (protocol version 2): a request may cover many consecutive streams, and
the pool sends a range in pieces sized for each worker. Whatever the pieces, the count
is the per-stream definition summed: bit-identical to one request per stream.
"""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from worker_process import PATIENT_START_S

from mcpi_coordinator.errors import RequestFailed
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.pool.dispatch import LANE_FIRST_PIECE_STREAMS, LANE_IMPLEMENTATION, LANE_WIDTH
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import by_slot, fake_launcher
from mcpi_worker.kernels import KERNELS, count_numpy
from mcpi_worker.protocol import MAX_GROUPS, Sample
from mcpi_worker.sampling import count_groups

SEED = 31
V1 = FakeBehaviour(versions=(1,))


async def run(pool: WorkerPool, chunks: list[Chunk]) -> list[ChunkResult]:
    results = []
    async with pool.imap_unordered(chunks) as answers:
        async for result in answers:
            results.append(result)
    return results


def per_stream(results: list[ChunkResult]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for result in results:
        assert len(result.stream_counts) == result.chunk.streams
        assert sum(result.stream_counts) == result.inside
        for offset, inside in enumerate(result.stream_counts):
            stream = result.chunk.stream + offset
            assert stream not in counts, f"stream {stream} counted twice"
            counts[stream] = inside
    return counts


@given(
    seed=st.integers(0, 2**64 - 1),
    stream=st.integers(0, 2**64 - 40),
    streams=st.integers(1, 12),
    group=st.none() | st.integers(1, 5),
    points=st.integers(0, 300),
    kernel=st.sampled_from(sorted(KERNELS)),
)
@settings(max_examples=60, deadline=None)
def test_a_range_counts_exactly_what_one_request_per_stream_would(
    seed: int, stream: int, streams: int, group: int | None, points: int, kernel: str
) -> None:
    request = Sample(1, seed, stream, points, kernel, streams, group)
    singles = [KERNELS[kernel](seed, s, points, lambda: False) for s in range(stream, stream + streams)]
    size = streams if group is None else group
    assert count_groups(KERNELS[kernel], request) == [
        sum(singles[i : i + size]) for i in range(0, streams, size)
    ]


@pytest.mark.parametrize(
    "fleet", [{}, {0: V1, 1: V1}, {1: V1}], ids=["version-2", "version-1", "mixed"]
)
async def test_a_range_in_pieces_counts_every_stream_once_on_any_fleet(
    autojump_clock: trio.abc.Clock, fleet: dict[int, FakeBehaviour]
) -> None:
    run_chunks = [Chunk(SEED, 0, 500, streams=300), Chunk(SEED, 300, 500, streams=1), Chunk(SEED, 301, 500, streams=99)]
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, by_slot(fleet, launches=None))
            async with WorkerPool(2, launcher=launcher) as pool:
                results = await run(pool, run_chunks)
    counts = per_stream(results)
    assert counts == {s: count_numpy(SEED, s, 500) for s in range(400)}
    samples = [m for fake in launcher.launched for m in fake.stats.received if isinstance(m, Sample)]
    by_version = {fake.index: fake.behaviour.versions for fake in launcher.launched}
    for fake in launcher.launched:
        mine = [m for m in fake.stats.received if isinstance(m, Sample)]
        if by_version[fake.index] == (1,):
            assert all(m.streams == 1 for m in mine), "a version-1 worker got a range"
    if not fleet:
        # The fakes report no time, so pieces grow from one stream to FIRST_PIECE_POINTS,
        # within the guided share: far fewer requests than 400 one stream at a time.
        assert len(samples) <= 400 // 4, "pieces were not merged into ranges"


async def test_pieces_grow_to_the_worker_s_speed(autojump_clock: trio.abc.Clock) -> None:
    """The first piece is one stream (the worker's speed is unknown); the next ones carry
    about a quarter of a second of the worker's own measured work."""
    paced = FakeBehaviour(points_per_s=8e7)
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, paced)
            async with WorkerPool(1, launcher=launcher, pipeline_depth=1) as pool:
                results = await run(pool, [Chunk(SEED, 0, 100_000, streams=1000)])
    sizes = [r.chunk.streams for r in sorted(results, key=lambda r: r.chunk.stream)]
    assert sum(sizes) == 1000
    # Then 0.25 s at the 8e7 points/s it reported: 200 streams, below the guided share
    # (half of what is left of the range), and less at the end of the range.
    assert sizes[:4] == [1, 200, 200, 200]
    assert max(sizes) <= MAX_GROUPS


async def test_a_consumer_that_lags_holds_the_workers_back_for_a_run_of_any_size(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A range of a million streams on two fast fakes, consumed one result a second: the
    answers received and not yet consumed used to grow with the run (every answer freed
    room for another piece); they stay within the batch's window and twice what the
    workers hold in flight (what was in flight when the range was held, and the pieces
    cut for the room its answers freed before the batch heard of them)."""
    fast = FakeBehaviour(made_up_counts=True, points_per_s=1e9, jobs=2, max_inflight=4)
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, fast)
            async with WorkerPool(2, launcher=launcher) as pool:
                window, in_flight = 2 * 2 * 2, 2 * 4  # 2 x workers x pipeline depth; 2 x max_inflight
                async with pool.imap_unordered([Chunk(SEED, 0, 1000, streams=10**6)]) as results:
                    consumed = 0
                    async for _ in results:
                        consumed += 1
                        await trio.sleep(1.0)  # the fakes answer a piece in microseconds
                        received = sum(fake.stats.results_sent for fake in launcher.alive())
                        assert received - consumed <= window + 2 * in_flight
                        if consumed == 200:
                            break
            nursery.cancel_scope.cancel()


async def test_sample_of_a_range_needs_a_version_2_worker(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            async with WorkerPool(1, launcher=fake_launcher(nursery, FakeBehaviour())) as pool:
                result = await pool.sample(Chunk(SEED, 10, 100, streams=7))
                assert result.stream_counts == tuple(count_numpy(SEED, s, 100) for s in range(10, 17))
            async with WorkerPool(1, launcher=fake_launcher(nursery, V1)) as pool:
                with pytest.raises(RequestFailed, match="needs protocol version 2"):
                    await pool.sample(Chunk(SEED, 10, 100, streams=7))


async def test_ranges_through_the_real_worker_with_two_jobs() -> None:
    import sys

    command = [sys.executable, "-m", "mcpi_worker", "--jobs", "2"]
    with trio.fail_after(300):  # a bound against a hang: a worker starts slowly on a busy machine
        async with WorkerPool(1, command, startup_timeout=PATIENT_START_S) as pool:
            assert pool.stats.workers[0].state == "ready"
            results = await run(pool, [Chunk(SEED, 0, 20_000, streams=200)])
    counts = per_stream(results)
    assert counts == {s: count_numpy(SEED, s, 20_000) for s in range(200)}
    assert len(results) < 200


async def test_a_real_lane_worker_gets_whole_lane_groups() -> None:
    """The real worker counting in lanes (``MCPI_NUMPY_IMPL=fused``) says so in its
    welcome and its answers; every piece it gets is a multiple of the lane width, up to the
    rest of the range, from the first (``LANE_FIRST_PIECE_STREAMS``, its speed unknown: one
    stream, before its welcome said so), and counts as before."""
    import sys

    command = ["env", "MCPI_NUMPY_IMPL=fused", sys.executable, "-m", "mcpi_worker"]
    with trio.fail_after(300):  # numba's load, on a busy machine
        async with WorkerPool(1, command, pipeline_depth=1) as pool:
            results = await run(pool, [Chunk(SEED, 0, 20_000, streams=200)])
    assert {r.implementation for r in results} == {LANE_IMPLEMENTATION}
    sizes = [r.chunk.streams for r in sorted(results, key=lambda r: r.chunk.stream)]
    assert sizes[0] == LANE_FIRST_PIECE_STREAMS and len(sizes) > 2, sizes
    assert all(size % LANE_WIDTH == 0 for size in sizes[:-1]), sizes
    assert per_stream(results) == {s: count_numpy(SEED, s, 20_000) for s in range(200)}


def test_the_dispatcher_s_lane_figures_are_the_worker_s() -> None:
    """The coordinator cannot import the worker's kernels: its copies are held to them here."""
    from mcpi_worker.kernels import lanes
    from mcpi_worker.kernels.choice import Implementation

    assert LANE_WIDTH == lanes.LANE_MULTIPLE
    assert Implementation.NUMBA_FUSED.value == LANE_IMPLEMENTATION
