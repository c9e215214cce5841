"""Sampling kernels: count random points of one seeded stream inside the quarter circle.

A kernel's count is a pure function of ``(seed, stream, points)``: the stream is
``numpy.random.SeedSequence(seed, spawn_key=(stream,))``, never ``seed + stream``,
so chunks are statistically independent and any worker computes any chunk to the
same count. protocol.md, "Sampling", is the normative definition.

The ``numpy`` kernel has two implementations of that one definition, with identical
counts: ``numba-fused`` (``fused.py`` for one stream, ``lanes.py`` for the streams of a
range side by side in SIMD lanes; needs the ``fast`` extra) and ``numpy``
(``numpy_impl.py``); ``choice.py`` decides which runs (``MCPI_NUMPY_IMPL``). The
``python`` kernel (``python_impl.py``) is the lesson's loop.

Kernels poll ``should_stop`` between blocks so that a cancel or EOF seen by the
worker's reader thread stops a long computation within milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from mcpi_worker.constants import DEFAULT_KERNEL, KERNEL_VERSIONS
from mcpi_worker.kernel_policy import ENVIRONMENT_VARIABLE, KernelConfigError, Policy
from mcpi_worker.kernels.base import Cancelled, Kernel, StopCheck, never, stream_seed_sequence
from mcpi_worker.kernels.choice import (
    FusedUnavailable,
    Implementation,
    NumpyKernel,
    NumpyKernelStatus,
)
from mcpi_worker.kernels.python_impl import PYTHON_POLL_EVERY, count_python, python_seed

__all__ = [
    "BLOCK_POINTS",
    "DEFAULT_KERNEL",
    "ENVIRONMENT_VARIABLE",
    "KERNELS",
    "KERNEL_VERSIONS",
    "NUMPY_KERNEL",
    "PYTHON_POLL_EVERY",
    "Cancelled",
    "FusedUnavailable",
    "Implementation",
    "Kernel",
    "KernelConfigError",
    "NumpyKernel",
    "NumpyKernelStatus",
    "Policy",
    "StopCheck",
    "count_numpy",
    "count_python",
    "inside_quarter_circle",
    "iter_point_blocks",
    "kernel_implementations",
    "prepare_kernels",
    "python_seed",
    "stream_seed_sequence",
    "welcome_implementations",
]

if TYPE_CHECKING:
    from mcpi_worker.kernels.numpy_impl import BLOCK_POINTS, inside_quarter_circle, iter_point_blocks

_NUMPY_IMPL_NAMES: Final = frozenset({"BLOCK_POINTS", "inside_quarter_circle", "iter_point_blocks"})


def __getattr__(name: str) -> Any:
    """The NumPy implementation's names, imported when first asked for: importing this
    package does not import NumPy (a worker counting with our object cache never does)."""
    if name in _NUMPY_IMPL_NAMES:
        from mcpi_worker.kernels import numpy_impl

        return getattr(numpy_impl, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


NUMPY_KERNEL: Final[NumpyKernel] = NumpyKernel()
"""This process's ``numpy`` kernel, its policy from ``MCPI_NUMPY_IMPL``."""

PYTHON_IMPLEMENTATION: Final[str] = "python"


def count_numpy(
    seed: int,
    stream: int,
    points: int,
    should_stop: StopCheck = never,
    *,
    implementation: Implementation | None = None,
    block_points: int | None = None,
) -> int:
    """The ``numpy`` kernel's count (protocol.md §11.2), by the implementation the
    policy picks, or by ``implementation`` if given (for tests and benchmarks)."""
    return NUMPY_KERNEL.count(
        seed, stream, points, should_stop, implementation=implementation, block_points=block_points
    )


KERNELS: Final[dict[str, Kernel]] = {
    "numpy": NUMPY_KERNEL,
    "python": count_python,
}
"""Kernels by wire name, in ``KERNEL_VERSIONS``' order: the first, ``DEFAULT_KERNEL``,
is the default. The names, their order and their versions are written in
``mcpi_worker.constants``, which a coordinator reads without loading NumPy."""


def kernel_implementations() -> dict[str, str]:
    """Each kernel's wire name -> the implementation that runs its next big sample now:
    ``{"numpy": "numba-fused" or "numpy", "python": "python"}``. Under ``auto`` the
    numpy kernel's entry changes once, from "numpy" to "numba-fused"."""
    return {"numpy": NUMPY_KERNEL.implementation().value, "python": PYTHON_IMPLEMENTATION}


def welcome_implementations() -> dict[str, str]:
    """``kernel_implementations`` as the ``welcome`` says them: the numpy kernel's is what
    counts its next big sample (``NumpyKernel.implementation_ahead``), "numba-fused" already
    while a load that a size hint started is under way, which that sample waits for. A
    coordinator sizes a worker's first pieces of a range by it (``pool.dispatch``)."""
    return {"numpy": NUMPY_KERNEL.implementation_ahead().value, "python": PYTHON_IMPLEMENTATION}


def prepare_kernels() -> dict[str, str]:
    """Call once at worker start-up: checks ``MCPI_NUMPY_IMPL`` (``KernelConfigError``,
    a one-line message, if it is not auto, fused or numpy), loads the fused
    implementation now under ``fused``, and returns ``kernel_implementations()``."""
    NUMPY_KERNEL.prepare()
    return kernel_implementations()
