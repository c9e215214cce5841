"""The fused (numba) implementation of the numpy kernel against NumPy's, count for count.

Both implement protocol.md §11.2; these tests hold them to the same count for any
seed, stream and number of points (hypothesis), to the golden table, across their
block and buffer boundaries, and check what the compiled loop must keep doing:
stopping when asked, flat memory, and running without the GIL.
"""

from __future__ import annotations

import math
import threading
import tracemalloc

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from stop_checks import stop_after
from test_golden import KERNEL_TABLE

from mcpi_worker.kernels import Cancelled, Implementation, NumpyKernel, Policy, fused, numpy_impl
from mcpi_worker.kernels.base import Continuation

U64 = st.integers(min_value=0, max_value=2**64 - 1)

BOUNDARIES = sorted(
    {
        0,
        1,
        2,
        3,
        fused.GROUP - 1,
        fused.GROUP,
        fused.GROUP + 1,
        2 * fused.GROUP + 3,
        fused.LAG_GROUPS * fused.GROUP - 1,
        fused.LAG_GROUPS * fused.GROUP,
        fused.LAG_GROUPS * fused.GROUP + 1,
        (fused.LAG_GROUPS + 1) * fused.GROUP - 1,
        (fused.LAG_GROUPS + 1) * fused.GROUP,
        (fused.LAG_GROUPS + 1) * fused.GROUP + 1,
        fused.RING_WORDS - 1,
        fused.RING_WORDS,
        fused.RING_WORDS + 1,
        fused.RING_WORDS + fused.LAG_GROUPS * fused.GROUP + 5,
        3 * fused.RING_WORDS + fused.GROUP - 1,
        numpy_impl.BLOCK_POINTS - 1,
        numpy_impl.BLOCK_POINTS,
        numpy_impl.BLOCK_POINTS + 1,
        2 * numpy_impl.BLOCK_POINTS + 7,
    }
)
"""Point counts at the edges of the fused loop's groups, of the lag between writing a
group and testing it, of its ring (wrapping once and more) and of NumPy's blocks."""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=U64,
    stream=U64,
    points=st.one_of(st.sampled_from(BOUNDARIES), st.integers(0, 300_000)),
    block_points=st.sampled_from([1, 7, fused.RING_WORDS + 1, 65_536, fused.BLOCK_POINTS]),
)
@example(seed=0, stream=0, points=0, block_points=1)
@example(seed=2**64 - 1, stream=2**64 - 1, points=1, block_points=1)
def test_fused_counts_what_numpy_counts(seed: int, stream: int, points: int, block_points: int) -> None:
    if block_points < 64:
        points = min(points, 5_000)  # one compiled call per point or so: keep it short
    assert fused.count(seed, stream, points, block_points=block_points) == numpy_impl.count(
        seed, stream, points
    )


@settings(max_examples=100, deadline=None)
@given(
    seed=U64,
    stream=U64,
    points=st.integers(0, 200_000),
    block_points=st.sampled_from([1_000, 4_099, 65_536]),
    after_blocks=st.integers(1, 5),
)
def test_a_numpy_sample_handed_over_to_the_fused_loop_keeps_its_count(
    seed: int, stream: int, points: int, block_points: int, after_blocks: int
) -> None:
    """What the auto policy does to a running sample once the loop is loaded."""
    blocks = [0]

    def switch(counted: int) -> Continuation | None:
        blocks[0] += 1
        return fused.count_from if blocks[0] >= after_blocks else None

    handed_over = numpy_impl.count(seed, stream, points, block_points=block_points, switch=switch)
    assert handed_over == numpy_impl.count(seed, stream, points)


@pytest.mark.parametrize("points", BOUNDARIES)
def test_boundaries_one_point_at_a_time(points: int) -> None:
    """Counting n points equals counting n-1 and the n-th on its own state (no point
    lost or repeated at a boundary)."""
    if points == 0:
        return
    state = fused.initial_state(42, 3)
    words = np.empty(fused.RING_WORDS, dtype=np.uint64)
    first = fused._LOOP(state, points - 1, words)
    last = fused._LOOP(state, 1, words)
    assert first + last == numpy_impl.count(42, 3, points)


def test_state_is_numpys_sfc64_state_and_advances_like_it() -> None:
    generator = np.random.SFC64(np.random.SeedSequence(12345, spawn_key=(0,)))
    state = fused.initial_state(12345, 0)
    np.testing.assert_array_equal(state, generator.state["state"]["state"])
    fused._LOOP(state, 1000, np.empty(fused.RING_WORDS, dtype=np.uint64))
    generator.random_raw(1000)
    np.testing.assert_array_equal(state, generator.state["state"]["state"])


@pytest.mark.parametrize(
    ("seed", "stream", "points", "inside"), [row[1:] for row in KERNEL_TABLE if row[0] == "numpy"]
)
@pytest.mark.parametrize("implementation", list(Implementation))
def test_both_implementations_reproduce_the_golden_table(
    implementation: Implementation, seed: int, stream: int, points: int, inside: int
) -> None:
    kernel = NumpyKernel(Policy.AUTO)
    assert kernel.count(seed, stream, points, implementation=implementation) == inside


def test_no_fused_multiply_add_near_the_arc() -> None:
    """The count of the issue that found it: with x*x + y*y contracted into an FMA, or
    tested on exact integers, 6 of these 2e8 points land on the other side of the arc."""
    assert fused.count(11, 0, 200_000_000) == 157_080_392


def test_fused_stops_when_asked_between_blocks() -> None:
    should_stop, counter = stop_after(3)
    with pytest.raises(Cancelled):
        fused.count(1, 0, 10**12, should_stop)
    assert counter[0] == 3


def test_fused_polls_once_per_block() -> None:
    calls: list[int] = []
    fused.count(1, 0, 3 * fused.BLOCK_POINTS + 1, lambda: bool(calls.append(0)))
    assert len(calls) == 4


def test_fused_memory_is_flat_in_points() -> None:
    fused.count(1, 0, 10)  # warm
    peaks = []
    for points in (10**5, 10**7):
        tracemalloc.start()
        fused.count(3, 1, points)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # The state and one buffer of RING_WORDS words, whatever the number of points.
    assert peaks[1] <= peaks[0] + 1024
    assert peaks[1] < 16 * 1024


def test_the_compiled_loop_releases_the_gil() -> None:
    """While one long compiled call runs on a thread, this thread keeps running Python.
    (It could not run at all if the call held the GIL: no bytecode runs without it.)"""
    state = fused.initial_state(5, 5)
    words = np.empty(fused.RING_WORDS, dtype=np.uint64)
    started, done = threading.Event(), threading.Event()

    def long_call() -> None:
        started.set()
        fused._LOOP(state, 300_000_000, words)
        done.set()

    thread = threading.Thread(target=long_call)
    thread.start()
    assert started.wait(10)
    iterations_while_running = 0
    while not done.is_set():
        iterations_while_running += 1
    thread.join(10)
    assert iterations_while_running > 1000


def test_two_threads_count_in_parallel_to_the_same_counts() -> None:
    results: dict[int, int] = {}

    def run(stream: int) -> None:
        results[stream] = fused.count(9, stream, 3_000_000)

    threads = [threading.Thread(target=run, args=(stream,)) for stream in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {stream: numpy_impl.count(9, stream, 3_000_000) for stream in range(4)}


def scalar_inside(words: np.ndarray) -> int:
    """protocol.md §11.2's test of each word, as the scalar loop spells it, in NumPy float32."""
    x = ((words >> np.uint64(8)) & np.uint64(0xFFFFFF)).astype(np.int32).astype(np.float32)
    y = (words >> np.uint64(40)).astype(np.int32).astype(np.float32)
    return int(np.count_nonzero(x * x + y * y < np.float32(2.0**48)))


@numba.njit
def vector_inside(words: np.ndarray, start: int) -> int:
    return fused._inside16(words, start)  # type: ignore[no-any-return]


def near_the_arc(x: int, above: int) -> int:
    """A word whose point has x = ``x`` (below 2**24) and y at the arc, plus ``above``,
    with garbage in the bits the test drops (the low 8 of each half)."""
    y = max(0, min(2**24 - 1, math.isqrt(2**48 - x * x) + above))
    return (y << 40) | (0xA5 << 32) | (x << 8) | 0x5A


WORDS_NEAR_THE_ARC = st.builds(near_the_arc, st.integers(0, 2**24 - 1), st.integers(-2, 2))


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(st.one_of(U64, WORDS_NEAR_THE_ARC), min_size=fused.GROUP, max_size=fused.GROUP),
    start=st.integers(0, 3),
)
@example(words=[0] * fused.GROUP, start=0)
@example(words=[2**64 - 1] * fused.GROUP, start=1)
@example(words=[near_the_arc(2**23, d % 3 - 1) for d in range(fused.GROUP)], start=2)
def test_the_vector_test_counts_what_the_scalar_test_counts(words: list[int], start: int) -> None:
    """``_inside16`` (16 points in vector registers, on 32-bit halves) against the
    definition point by point: any words, points within a float32 rounding of the arc,
    at any offset in the buffer (the ring is read from any group)."""
    buffer = np.zeros(start + fused.GROUP + 3, dtype=np.uint64)
    buffer[start : start + fused.GROUP] = words
    assert vector_inside(buffer, start) == scalar_inside(buffer[start : start + fused.GROUP])
