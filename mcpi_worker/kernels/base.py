"""What every kernel implementation shares: streams, the stop check, cancellation.

Importing this module does not import NumPy: a worker whose fused kernels come from our
object cache (``native.py``) counts without it. The two functions that need NumPy's
seeding import it when called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mcpi_worker.logs import LazyLogger, get_logger


class Cancelled(Exception):
    """Raised by a kernel whose ``should_stop`` returned True."""


StopCheck = Callable[[], bool]

Kernel = Callable[[int, int, int, StopCheck], int]

StreamsCounter = Callable[[int, int, int, int, StopCheck], list[int]]
"""``(seed, first, streams, points, should_stop)`` -> the count of each of ``streams``
consecutive streams from ``first``: a kernel's fast way through a range (protocol v2)."""
"""``kernel(seed, stream, points, should_stop) -> inside``."""


if TYPE_CHECKING:
    import numpy as np

Continuation = Callable[["np.ndarray", int, StopCheck], int]
"""``continue_from(state, points, should_stop) -> inside``: count the next ``points``
points of an SFC64 generator whose state (a, b, c, counter) is ``state``."""

Switch = Callable[[int], Continuation | None]
"""Polled by the NumPy implementation after each block with the points it counted:
a ``Continuation`` to finish the sample with (the compiled loop, once it is loaded),
or None to go on. Both count the same points in the same order, so a sample handed
over in the middle has the very count it would have had."""


def never() -> bool:
    return False


def stream_seed_sequence(seed: int, stream: int) -> np.random.SeedSequence:
    import numpy as np

    return np.random.SeedSequence(seed, spawn_key=(stream,))


def sfc64_state(bit_generator: np.random.SFC64) -> np.ndarray:
    """The generator's (a, b, c, counter), a copy, as four contiguous uint64."""
    import numpy as np

    return np.array(bit_generator.state["state"]["state"], dtype=np.uint64)


def kernel_log() -> LazyLogger:
    """The logger for what the kernels have to say (which implementation, a fallback).

    structlog as the process configured it (the worker: JSON lines on stderr). Kernels
    also run where nothing configured structlog, in a fake worker or a script, and
    structlog's default prints to stdout, which must never happen in a process that
    speaks the protocol on stdout: there, stderr (``mcpi_worker.logs.get_logger``).
    """
    return get_logger("mcpi_worker")
