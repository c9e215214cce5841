"""The ``numpy`` kernel's definition in vectorised NumPy: the fallback implementation.

Several passes over a block in L2 per 65 536 points (raw words, shift, convert,
multiply, add, compare, count); ``fused.py`` does the same in one compiled loop. Both
give the identical count for every (seed, stream, points): protocol.md §11.2 is the
definition, and the tests hold the two against each other.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Final

import numpy as np

from mcpi_worker.kernels.base import (
    Cancelled,
    StopCheck,
    Switch,
    never,
    sfc64_state,
    stream_seed_sequence,
)

BLOCK_POINTS: Final[int] = 1 << 16
"""Points per numpy block: 512 KiB of float32, small enough to stay in L2 and to
poll for cancellation every fraction of a millisecond, large enough to amortise Python overhead.
Memory is flat in ``points``; the count does not depend on this value."""


def _fill_draws(bit_generator: np.random.BitGenerator, out: np.ndarray) -> None:
    """Fill ``out`` (float32, even length) with the next 24-bit draws ``u >> 8``, as floats.

    numpy's ``Generator.random(dtype=float32)`` makes a float from the next 32-bit
    draw ``u`` as ``(u >> 8) * 2**-24``, and SFC64 hands out each 64-bit word as two
    32-bit draws, low half first. A little-endian uint32 view of the raw words is
    exactly that sequence of draws; going through ``random_raw`` is about 30% faster
    than ``Generator.random``. Integers below 2**24 are exact in float32.
    """
    words = bit_generator.random_raw(len(out) // 2)
    halves = words.view(np.uint32)
    if sys.byteorder != "little":  # the view would pair the halves high first
        halves = halves.reshape(-1, 2)[:, ::-1].reshape(-1)
    np.right_shift(halves, np.uint32(8), out=halves)
    np.copyto(out, halves, casting="unsafe")


_TWO_TO_MINUS_24: Final = np.float32(2.0**-24)
_TWO_TO_48: Final = np.float32(2.0**48)


def _iter_draw_blocks(bit_generator: np.random.SFC64, points: int, block_points: int) -> Iterator[np.ndarray]:
    """The draws of ``points`` points as flat float32 blocks (x0, y0, x1, y1, ...) of
    integers below 2**24. One buffer is reused for every block; a block is drawn when
    it is asked for, so the generator stands just past the blocks handed out."""
    buffer = np.empty(2 * block_points, dtype=np.float32)
    remaining = points
    while remaining > 0:
        n = min(block_points, remaining)
        flat = buffer[: 2 * n]
        _fill_draws(bit_generator, flat)
        yield flat
        remaining -= n


def iter_point_blocks(
    seed: int, stream: int, points: int, block_points: int = BLOCK_POINTS
) -> Iterator[np.ndarray]:
    """The numpy kernel's points as float32 arrays of shape (k, 2): x, y in [0, 1).

    The points are consecutive pairs of ``Generator(SFC64(stream)).random(dtype=float32)``
    draws; a pair never straddles a block, so the points (and every count made from
    them) do not depend on ``block_points``. The arrays are reused between
    iterations: copy one to keep it. The plotting code uses this to draw the very
    points a run counts.
    """
    bit_generator = np.random.SFC64(stream_seed_sequence(seed, stream))
    for flat in _iter_draw_blocks(bit_generator, points, block_points):
        np.multiply(flat, _TWO_TO_MINUS_24, out=flat)
        yield flat.reshape(-1, 2)


def inside_quarter_circle(xy: np.ndarray) -> np.ndarray:
    """The numpy kernel's inside test, per point, for points from ``iter_point_blocks``.

    ``x*x + y*y < 1`` evaluated in float32: ``count_numpy`` makes this same test, bit
    for bit, on the unscaled draws. In float64, points within ~1e-7 of the arc (about
    one in ten million) could change sides and no longer match the kernel's count.
    """
    x, y = xy[:, 0], xy[:, 1]
    inside: np.ndarray = (x * x + y * y) < np.float32(1.0)
    return inside


def count(
    seed: int,
    stream: int,
    points: int,
    should_stop: StopCheck = never,
    *,
    block_points: int = BLOCK_POINTS,
    switch: Switch | None = None,
) -> int:
    """Vectorised kernel: float32 coordinates from SFC64, inside iff x*x + y*y < 1 in float32.

    It works on the unscaled draws ``a = x * 2**24`` and tests ``a*a + b*b < 2**48``
    instead, saving a pass over memory. In float32 this is the same test, bit for
    bit: scaling by a power of two commutes with rounding as long as nothing
    overflows or goes subnormal, and every value here is 0 or between 1 and 2**49.

    ``switch`` (see ``base.Switch``) may hand the rest of the sample to a faster
    implementation between two blocks.
    """
    inside = 0
    radius2_buffer = np.empty(block_points, dtype=np.float32)
    is_inside = np.empty(block_points, dtype=np.bool_)
    bit_generator = np.random.SFC64(stream_seed_sequence(seed, stream))
    remaining = points
    for flat in _iter_draw_blocks(bit_generator, points, block_points):
        if should_stop():
            raise Cancelled
        n = len(flat) // 2
        # Every step writes into preallocated, contiguous memory (a strided output
        # would make the comparison below 10x slower): that is what keeps this near
        # the speed of the generator itself.
        np.multiply(flat, flat, out=flat)
        radius2 = radius2_buffer[:n]
        np.add(flat[0::2], flat[1::2], out=radius2)
        mask = is_inside[:n]
        np.less(radius2, _TWO_TO_48, out=mask)
        inside += int(np.count_nonzero(mask))
        remaining -= n
        if switch is not None and (faster := switch(n)) is not None and remaining > 0:
            return inside + faster(sfc64_state(bit_generator), remaining, should_stop)
    return inside
