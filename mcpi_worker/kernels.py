"""Sampling kernels: count random points of one seeded stream inside the quarter circle.

A kernel's count is a pure function of ``(seed, stream, points)``: the stream is
``numpy.random.SeedSequence(seed, spawn_key=(stream,))``, never ``seed + stream``,
so chunks are statistically independent and any worker computes any chunk to the
same count. protocol.md, "Sampling", is the normative definition.

Kernels poll ``should_stop`` between blocks so that a cancel or EOF seen by the
worker's reader thread stops a long computation within milliseconds.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterator
from typing import Final

import numpy as np

BLOCK_POINTS: Final[int] = 1 << 16
"""Points per numpy block: 512 KiB of float32, small enough to stay in L2 and to
poll for cancellation every ~0.3 ms, large enough to amortise Python overhead.
Memory is flat in ``points``; the count does not depend on this value."""

PYTHON_POLL_EVERY: Final[int] = 1 << 14
"""The pure-Python loop checks ``should_stop`` this often (~5 ms of work)."""


class Cancelled(Exception):
    """Raised by a kernel whose ``should_stop`` returned True."""


StopCheck = Callable[[], bool]


def _never() -> bool:
    return False


def stream_seed_sequence(seed: int, stream: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(stream,))


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


def _iter_draw_blocks(
    seed: int, stream: int, points: int, block_points: int
) -> Iterator[np.ndarray]:
    """The draws of ``points`` points as flat float32 blocks (x0, y0, x1, y1, ...) of
    integers below 2**24. One buffer is reused for every block."""
    bit_generator = np.random.SFC64(stream_seed_sequence(seed, stream))
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
    for flat in _iter_draw_blocks(seed, stream, points, block_points):
        np.multiply(flat, _TWO_TO_MINUS_24, out=flat)
        yield flat.reshape(-1, 2)


def inside_quarter_circle(xy: np.ndarray) -> np.ndarray:
    """The numpy kernel's inside test, per point, for points from ``iter_point_blocks``.

    ``x*x + y*y < 1`` evaluated in float32: ``count_numpy`` makes this same test, bit
    for bit, on the unscaled draws. In float64, points within ~1e-7 of the arc (about
    one in ten million) could change sides and no longer match the kernel's count.
    """
    x, y = xy[:, 0], xy[:, 1]
    return (x * x + y * y) < np.float32(1.0)


def count_numpy(
    seed: int,
    stream: int,
    points: int,
    should_stop: StopCheck = _never,
    *,
    block_points: int = BLOCK_POINTS,
) -> int:
    """Vectorised kernel: float32 coordinates from SFC64, inside iff x*x + y*y < 1 in float32.

    It works on the unscaled draws ``a = x * 2**24`` and tests ``a*a + b*b < 2**48``
    instead, saving a pass over memory. In float32 this is the same test, bit for
    bit: scaling by a power of two commutes with rounding as long as nothing
    overflows or goes subnormal, and every value here is 0 or between 1 and 2**49.
    """
    inside = 0
    radius2_buffer = np.empty(block_points, dtype=np.float32)
    is_inside = np.empty(block_points, dtype=np.bool_)
    for flat in _iter_draw_blocks(seed, stream, points, block_points):
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
    return inside


def python_seed(seed: int, stream: int) -> int:
    """The integer that seeds ``random.Random`` for the python kernel (128 bits of the stream)."""
    words = stream_seed_sequence(seed, stream).generate_state(4, dtype=np.uint32)
    return int.from_bytes(words.astype("<u4").tobytes(), "little")


def count_python(seed: int, stream: int, points: int, should_stop: StopCheck = _never) -> int:
    """The lesson's loop: one ``random()`` for x, one for y, in float64."""
    rnd = random.Random(python_seed(seed, stream))
    draw = rnd.random
    inside = 0
    remaining = points
    while remaining > 0:
        if should_stop():
            raise Cancelled
        n = min(PYTHON_POLL_EVERY, remaining)
        for _ in range(n):
            x = draw()
            y = draw()
            if x * x + y * y < 1.0:
                inside += 1
        remaining -= n
    return inside


Kernel = Callable[[int, int, int, StopCheck], int]

KERNELS: Final[dict[str, Kernel]] = {
    "numpy": count_numpy,
    "python": count_python,
}
"""Kernels by wire name. The first is the default."""

DEFAULT_KERNEL: Final[str] = next(iter(KERNELS))
