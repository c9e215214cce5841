"""Sampling kernels: determinism, independence of streams, the fast path, cancellation.

Tests of the numpy kernel that do not name an implementation run on whichever the
process's policy picks (``MCPI_NUMPY_IMPL``: CI runs them once more with ``fused``);
the ones about NumPy's blocks name ``Implementation.NUMPY``. tests/worker/test_kernel_fused.py
holds the two implementations against each other.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from stop_checks import stop_after

from mcpi_worker import kernels
from mcpi_worker.constants import DEFAULT_KERNEL, KERNEL_VERSIONS
from mcpi_worker.kernels import (
    BLOCK_POINTS,
    KERNELS,
    Cancelled,
    Implementation,
    count_numpy,
    count_python,
    inside_quarter_circle,
    iter_point_blocks,
    python_seed,
)

NUMPY = Implementation.NUMPY


def never() -> bool:
    return False


def test_kernel_names_agree_with_their_light_home() -> None:
    # mcpi_worker.constants holds the names, order and versions for the coordinator,
    # which must not import this package; the kernels themselves are listed here.
    assert list(KERNELS) == list(KERNEL_VERSIONS)
    assert next(iter(KERNELS)) == DEFAULT_KERNEL == kernels.DEFAULT_KERNEL


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_same_request_same_count(kernel: str) -> None:
    count = KERNELS[kernel]
    assert count(7, 3, 20_000, never) == count(7, 3, 20_000, never)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_streams_and_seeds_differ(kernel: str) -> None:
    count = KERNELS[kernel]
    counts = {count(seed, stream, 20_000, never) for seed in (1, 2) for stream in (0, 1, 2)}
    assert len(counts) == 6


def test_streams_are_not_seed_plus_index() -> None:
    # With seed + stream, run 1's chunk 1 would equal run 2's chunk 0.
    first = next(iter_point_blocks(1, 1, 8)).copy()
    second = next(iter_point_blocks(2, 0, 8)).copy()
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_zero_points(kernel: str) -> None:
    assert KERNELS[kernel](1, 1, 0, never) == 0


@pytest.mark.parametrize(("kernel", "points"), [("numpy", 2_000_000), ("python", 200_000)])
def test_estimates_pi(kernel: str, points: int) -> None:
    inside = KERNELS[kernel](2024, 0, points, never)
    # Fixed seed, so this is deterministic; 6 standard errors of slack.
    standard_error = 4 * math.sqrt(math.pi / 4 * (1 - math.pi / 4) / points)
    assert abs(4 * inside / points - math.pi) < 6 * standard_error


@pytest.mark.parametrize(("seed", "stream", "points"), [(0, 0, 10), (5, 9, 100_001)])
def test_fast_float_path_equals_numpy_generator(seed: int, stream: int, points: int) -> None:
    generator = np.random.Generator(np.random.SFC64(kernels.stream_seed_sequence(seed, stream)))
    expected = generator.random(2 * points, dtype=np.float32).reshape(points, 2)
    ours = np.concatenate([block.copy() for block in iter_point_blocks(seed, stream, points)])
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("block_points", [1, 7, 1000, 65_536, 1 << 20])
def test_points_and_counts_do_not_depend_on_block_size(block_points: int) -> None:
    points = 150_001
    reference = np.concatenate([b.copy() for b in iter_point_blocks(3, 4, points)])
    if block_points >= 1000:  # block size 1 is too slow to walk 150k points
        ours = np.concatenate([b.copy() for b in iter_point_blocks(3, 4, points, block_points=block_points)])
        np.testing.assert_array_equal(ours, reference)
        assert count_numpy(3, 4, points, implementation=NUMPY, block_points=block_points) == count_numpy(
            3, 4, points
        )
    else:
        small = 2_000
        ours = np.concatenate([b.copy() for b in iter_point_blocks(3, 4, small, block_points=block_points)])
        np.testing.assert_array_equal(ours, reference[:small])
        assert count_numpy(3, 4, small, implementation=NUMPY, block_points=block_points) == count_numpy(
            3, 4, small
        )


def test_numpy_count_is_the_float32_circle_test_on_those_points() -> None:
    points = 100_003
    xy = np.concatenate([b.copy() for b in iter_point_blocks(11, 2, points)])
    x, y = xy[:, 0], xy[:, 1]
    by_definition = x * x + y * y < np.float32(1)
    assert (x * x).dtype == np.float32
    for implementation in Implementation:
        inside = count_numpy(11, 2, points, implementation=implementation)
        assert inside == int(np.count_nonzero(by_definition))
    np.testing.assert_array_equal(inside_quarter_circle(xy), by_definition)


def test_python_count_is_the_lessons_loop() -> None:
    rnd = random.Random(python_seed(11, 2))
    inside = 0
    for _ in range(30_000):
        x, y = rnd.random(), rnd.random()
        if x * x + y * y < 1.0:
            inside += 1
    assert count_python(11, 2, 30_000) == inside


def test_python_seed_uses_128_bits_of_the_stream() -> None:
    seeds = {python_seed(1, stream) for stream in range(50)}
    assert len(seeds) == 50
    assert max(seeds).bit_length() > 100


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kernels_stop_when_asked(kernel: str) -> None:
    should_stop, counter = stop_after(3)
    with pytest.raises(Cancelled):
        KERNELS[kernel](1, 0, 10**12, should_stop)
    assert counter[0] == 3


def test_numpy_kernel_polls_once_per_block() -> None:
    calls: list[int] = []
    count_numpy(1, 0, 5 * BLOCK_POINTS, lambda: bool(calls.append(0)), implementation=NUMPY)
    assert len(calls) == 5


def test_python_kernel_polls_every_so_often() -> None:
    calls: list[int] = []
    count_python(1, 0, 3 * kernels.PYTHON_POLL_EVERY, lambda: bool(calls.append(0)))
    assert len(calls) == 3


def test_iter_point_blocks_memory_is_flat() -> None:
    # Every block is a view of one reused buffer, whatever the number of points.
    blocks = iter_point_blocks(1, 0, 10 * BLOCK_POINTS)
    assert len({block.__array_interface__["data"][0] for block in blocks}) == 1
