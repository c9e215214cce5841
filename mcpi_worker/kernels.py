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


def _fill_uniform_float32(bit_generator: np.random.BitGenerator, out: np.ndarray) -> None:
    """Fill ``out`` (float32, even length) with the values ``Generator.random(dtype=float32)``
    would give, about 30% faster.

    numpy makes a float32 from the next 32-bit draw as ``(u >> 8) * 2**-24``, and
    SFC64 hands out each 64-bit word as two 32-bit draws, low half first. A
    little-endian uint32 view of the raw words is exactly that sequence of draws.
    """
    words = bit_generator.random_raw(len(out) // 2)
    halves = words.view(np.uint32)
    if sys.byteorder != "little":  # the view would pair the halves high first
        halves = halves.reshape(-1, 2)[:, ::-1].reshape(-1)
    np.right_shift(halves, np.uint32(8), out=halves)
    np.copyto(out, halves, casting="unsafe")  # 24-bit integers are exact in float32
    np.multiply(out, _TWO_TO_MINUS_24, out=out)


_TWO_TO_MINUS_24: Final = np.float32(2.0**-24)


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
    buffer = np.empty(2 * block_points, dtype=np.float32)
    remaining = points
    while remaining > 0:
        n = min(block_points, remaining)
        xy = buffer[: 2 * n]
        _fill_uniform_float32(bit_generator, xy)
        yield xy.reshape(n, 2)
        remaining -= n


def count_numpy(
    seed: int,
    stream: int,
    points: int,
    should_stop: StopCheck = _never,
    *,
    block_points: int = BLOCK_POINTS,
) -> int:
    """Vectorised kernel: float32 coordinates from SFC64, inside iff x*x + y*y < 1 in float32."""
    inside = 0
    is_inside = np.empty(block_points, dtype=np.bool_)
    for block in iter_point_blocks(seed, stream, points, block_points):
        if should_stop():
            raise Cancelled
        flat = block.reshape(-1)
        # Square in place, then sum each (x², y²) pair into the x slot; every step
        # writes into preallocated memory, which is what keeps this near memory speed.
        np.multiply(flat, flat, out=flat)
        radius2 = flat[0::2]
        np.add(radius2, flat[1::2], out=radius2)
        mask = is_inside[: len(radius2)]
        np.less(radius2, np.float32(1.0), out=mask)
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
