"""Sampling kernels: count random points of one seeded stream inside the quarter circle.

A kernel's count is a pure function of ``(seed, stream, points)``: the stream is
``numpy.random.SeedSequence(seed, spawn_key=(stream,))``, never ``seed + stream``,
so chunks are statistically independent and any worker computes any chunk to the
same count. protocol.md, "Sampling", is the normative definition.

Kernels poll ``should_stop`` between blocks so that a cancel or EOF seen by the
worker's reader thread stops a long computation within milliseconds.
"""

from __future__ import annotations

from typing import Final

from mcpi_worker.kernels.base import Cancelled, Kernel, StopCheck, never, stream_seed_sequence
from mcpi_worker.kernels.numpy_impl import BLOCK_POINTS, inside_quarter_circle, iter_point_blocks
from mcpi_worker.kernels.numpy_impl import count as count_numpy
from mcpi_worker.kernels.python_impl import PYTHON_POLL_EVERY, count_python, python_seed

__all__ = [
    "BLOCK_POINTS",
    "DEFAULT_KERNEL",
    "KERNELS",
    "PYTHON_POLL_EVERY",
    "Cancelled",
    "Kernel",
    "StopCheck",
    "count_numpy",
    "count_python",
    "inside_quarter_circle",
    "iter_point_blocks",
    "never",
    "python_seed",
    "stream_seed_sequence",
]

KERNELS: Final[dict[str, Kernel]] = {
    "numpy": count_numpy,
    "python": count_python,
}
"""Kernels by wire name. The first is the default."""

DEFAULT_KERNEL: Final[str] = next(iter(KERNELS))
