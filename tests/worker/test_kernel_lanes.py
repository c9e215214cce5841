"""The lane kernel: many streams of a range at once, each stream counted exactly as NumPy counts it.

``lanes.count_streams`` seeds a group of streams in compiled code and steps them side by
side in SIMD lanes; every stream's count must be ``numpy_impl.count``'s (protocol.md
§11.2), whatever the seed, the stream indices (up to the last one there is), the number
of streams (padded groups), the points (0, 1, odd, across the unrolled steps and the
compiled calls). A stop is seen between calls; memory does not grow with the points.
"""

from __future__ import annotations

import ctypes
import tracemalloc

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from stop_checks import stop_after
from test_golden import KERNEL_TABLE

from mcpi_worker.kernels import Cancelled, NumpyKernel, Policy, StopCheck, drive, lanes, numpy_impl
from mcpi_worker.kernels.base import never
from mcpi_worker.kernels.choice import LoadedFused, NumbaNotInstalled, load_numba
from mcpi_worker.protocol import Sample
from mcpi_worker.sampling import count_groups

U64 = st.integers(min_value=0, max_value=2**64 - 1)

POINT_EDGES = sorted(
    {0, 1, 2, 3, lanes.UNROLL - 1, lanes.UNROLL, lanes.UNROLL + 1, 2 * lanes.UNROLL + 3, 255, 256, 257, 1001}
)
"""Point counts around the unrolled steps (the passes and the steps left over)."""

CALL_SIZES = [1, 7, lanes.LANES * 3 + 5, 10_000, lanes.POINTS_PER_CALL]
"""``points_per_call``: small ones send even short streams down the long path, a group
at a time in many calls, with steps split anywhere."""


def numpy_counts(seed: int, first: int, streams: int, points: int) -> list[int]:
    return [numpy_impl.count(seed, first + i, points) for i in range(streams)]


@settings(max_examples=120, deadline=None)
@given(
    seed=U64,
    first=st.one_of(U64, st.integers(2**64 - 200, 2**64 - 1), st.integers(2**32 - 70, 2**32 + 3)),
    streams=st.integers(1, 2 * lanes.LANES + 11),
    points=st.one_of(st.sampled_from(POINT_EDGES), st.integers(0, 3000)),
    points_per_call=st.sampled_from(CALL_SIZES),
)
@example(seed=0, first=0, streams=lanes.LANES, points=1000, points_per_call=lanes.POINTS_PER_CALL)
@example(seed=2**64 - 1, first=2**64 - 13, streams=13, points=7, points_per_call=1)  # last stream; padded
@example(seed=2**64 - 1, first=2**32 - 5, streams=9, points=5, points_per_call=10_000)  # stream words 1 -> 2
@example(seed=5, first=0, streams=lanes.LANES + 1, points=0, points_per_call=1)
@example(seed=11, first=2**64 - 6, streams=6, points=9, points_per_call=7)  # one narrow vector, padded
@example(seed=11, first=0, streams=lanes.NARROW + 1, points=13, points_per_call=10_000)  # the first pair width
@example(seed=5, first=3, streams=lanes.MIN_STREAMS, points=1, points_per_call=lanes.POINTS_PER_CALL)
def test_each_stream_counts_as_numpy_counts_it(
    seed: int, first: int, streams: int, points: int, points_per_call: int
) -> None:
    streams = min(streams, 2**64 - first)
    ours = lanes.count_streams(seed, first, streams, points, points_per_call=points_per_call)
    assert ours == numpy_counts(seed, first, streams, points)


def test_streams_long_enough_for_many_calls_each() -> None:
    # Above POINTS_PER_CALL / LANES points a stream, a group is stepped in several calls.
    points = lanes.POINTS_PER_CALL // lanes.LANES * 3 + 5
    assert lanes.count_streams(7, 100, 70, points)[::23] == [
        numpy_impl.count(7, s, points) for s in range(100, 170, 23)
    ]


@pytest.mark.parametrize(
    ("seed", "stream", "points", "inside"), [row[1:] for row in KERNEL_TABLE if row[0] == "numpy"]
)
def test_the_golden_table_from_inside_a_range(seed: int, stream: int, points: int, inside: int) -> None:
    # The golden stream is the last of a range of five (the range cannot go past 2**64 - 1).
    first = max(0, stream - 4)
    assert lanes.count_streams(seed, first, 5, points)[stream - first] == inside


@pytest.mark.parametrize("points", [1000, lanes.POINTS_PER_CALL])
def test_a_stop_between_calls_cancels(points: int) -> None:
    should_stop, calls = stop_after(3)
    with pytest.raises(Cancelled):
        lanes.count_streams(5, 0, 100_000, points, should_stop)
    assert calls[0] == 3


def test_a_long_range_polls_at_least_every_call() -> None:
    points = 5 * lanes.POINTS_PER_CALL // lanes.LANES
    polls = [0]

    def count_polls() -> bool:
        polls[0] += 1
        return False

    lanes.count_streams(1, 0, 2 * lanes.LANES, points, count_polls)
    assert polls[0] >= 2 * 5  # two groups, five calls of steps each


def test_memory_stays_flat_in_the_points() -> None:
    def peak(points: int) -> int:
        tracemalloc.start()
        try:
            lanes.count_streams(3, 0, lanes.LANES, points, points_per_call=1 << 16)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(2000), peak(200_000)
    assert large < small + 4096


@pytest.mark.parametrize(
    ("streams", "groups"),
    [
        (4, [4]), (8, [8]), (9, [9]), (16, [16]), (17, [16, 1]), (19, [16, 1, 1, 1]), (20, [16, 4]),
        (24, [16, 8]), (25, [25]), (33, [32, 1]), (64, [64]), (65, [64, 1]), (70, [64, 6]), (80, [64, 16]),
        (130, [64, 64, 1, 1]),
    ],
)  # fmt: skip
def test_long_streams_are_grouped_so_that_few_lanes_step_padding(streams: int, groups: list[int]) -> None:
    assert lanes.long_groups(streams) == groups


@pytest.mark.parametrize("streams", [17, 20, 35, 67])
def test_each_group_of_long_streams_counts_as_numpy_counts_it(streams: int) -> None:
    """Groups of lanes, a narrow vector and single streams in one range, across calls."""
    assert lanes.count_streams(8, 2**32 - 9, streams, 301, points_per_call=1000) == numpy_counts(
        8, 2**32 - 9, streams, 301
    )


def test_fewer_streams_than_a_group_go_through_the_single_stream_loop() -> None:
    for streams in range(1, lanes.MIN_STREAMS):
        assert lanes.count_streams(9, 4, streams, 777) == numpy_counts(9, 4, streams, 777)


def test_the_fused_implementation_counts_ranges_in_lanes() -> None:
    assert load_numba().count_streams is lanes.count_streams


def test_without_numba_a_range_is_counted_by_numpy_stream_by_stream() -> None:
    def loader() -> LoadedFused:
        raise NumbaNotInstalled("numba is not installed (hidden)")

    kernel = NumpyKernel(Policy.FUSED, loader=loader)
    kernel.prepare()
    assert kernel.status().unavailable == "numba is not installed (hidden)"
    assert kernel.count_streams(3, 10, 11, 500) == numpy_counts(3, 10, 11, 500)


def test_a_range_of_long_streams_reaches_the_lanes_whole() -> None:
    """The worker's range loop (sampling.count_groups) slices a range by work for the stop
    checks; a kernel that counts ranges itself gets at least a group of lanes a slice."""
    slices: list[int] = []

    class RangeKernel:
        def __call__(self, seed: int, stream: int, points: int, should_stop: StopCheck = never) -> int:
            raise AssertionError("a range goes to count_streams")

        def count_streams(self, seed: int, first: int, streams: int, points: int, should_stop: StopCheck) -> list[int]:
            slices.append(streams)
            return [1] * streams

    request = Sample(id=1, seed=1, stream=0, points=10_000_000, kernel="numpy", streams=100, group=1)
    assert count_groups(RangeKernel(), request) == [1] * 100
    assert slices == [lanes.LANES, 100 - lanes.LANES]


def test_zero_point_streams_still_see_the_stop_flag_every_call() -> None:
    should_stop, calls = stop_after(2)
    with pytest.raises(Cancelled):
        lanes.count_streams(1, 0, 2**20, 0, should_stop)
    assert calls[0] == 2


@pytest.mark.parametrize("words", [1, 4, 7, 8, 64, 65, 1000])
def test_buffers_of_two_jobs_share_no_cache_line(words: int) -> None:
    """The compiled code writes its state and counts as it goes, and a worker's jobs run it
    side by side on buffers made one after the other: a line shared by two jobs' buffers
    bounces between their cores at every write (false sharing; small ``array.array``
    buffers are laid side by side in one pool). Every buffer starts on a line and no line
    it touches holds another's words."""
    buffers = [make(words) for make in (drive.u64, drive.i64) for _ in range(8)]
    lines: set[int] = set()
    for buffer in buffers:
        start = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        assert start % drive.LINE_BYTES == 0
        assert len(buffer) == words and buffer.itemsize == 8 and not any(buffer)
        touched = set(range(start // drive.LINE_BYTES, (start + 8 * words - 1) // drive.LINE_BYTES + 1))
        assert not touched & lines
        lines |= touched
