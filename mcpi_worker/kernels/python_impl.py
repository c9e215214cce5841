"""The ``python`` kernel: the lesson's pure-Python loop, kept for comparison."""

from __future__ import annotations

import random
from typing import Final

from mcpi_worker.kernels.base import Cancelled, StopCheck, never, stream_seed_sequence

PYTHON_POLL_EVERY: Final[int] = 1 << 14
"""The pure-Python loop checks ``should_stop`` this often (a few milliseconds of work)."""


def python_seed(seed: int, stream: int) -> int:
    """The integer that seeds ``random.Random`` for the python kernel (128 bits of the stream)."""
    import numpy as np  # the stream's seed is NumPy's; the worker may run without NumPy otherwise

    words = stream_seed_sequence(seed, stream).generate_state(4, dtype=np.uint32)
    return int.from_bytes(words.astype("<u4").tobytes(), "little")


def count_python(seed: int, stream: int, points: int, should_stop: StopCheck = never) -> int:
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
