"""What every kernel implementation shares: streams, the stop check, cancellation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class Cancelled(Exception):
    """Raised by a kernel whose ``should_stop`` returned True."""


StopCheck = Callable[[], bool]

Kernel = Callable[[int, int, int, StopCheck], int]
"""``kernel(seed, stream, points, should_stop) -> inside``."""


def never() -> bool:
    return False


def stream_seed_sequence(seed: int, stream: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(stream,))
