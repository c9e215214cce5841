"""``MCPI_NUMPY_IMPL``: which implementation of the ``numpy`` kernel a worker may load.

The policy is read here, in a module that imports only the standard library, rather
than in ``kernels.choice`` which acts on it, because a coordinator reads it too:
``launch.capacity`` counts a local worker's memory by whether it may load the fused
loop, and ``mcpi estimate`` warms numba's cache only when its workers will use it.
Both read the variable as the workers do, without loading the kernels (NumPy,
``kernels.choice`` (and so ``kernels``) imports these names from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from typing import Final

ENVIRONMENT_VARIABLE: Final[str] = "MCPI_NUMPY_IMPL"


class Policy(StrEnum):
    """What ``MCPI_NUMPY_IMPL`` asks for (``kernels.choice`` says what each does)."""

    AUTO = "auto"
    FUSED = "fused"
    NUMPY = "numpy"


class KernelConfigError(ValueError):
    """``MCPI_NUMPY_IMPL`` holds something else than a policy name (one-line message)."""


def policy_from_environment(environ: Mapping[str, str] = os.environ) -> Policy:
    """The policy ``environ`` asks for: ``auto`` when the variable is unset or empty;
    case and surrounding blanks do not matter. Raises ``KernelConfigError`` for any
    other value, with a message naming the variable and the choices."""
    text = environ.get(ENVIRONMENT_VARIABLE, "").strip().lower() or Policy.AUTO.value
    try:
        return Policy(text)
    except ValueError:
        choices = ", ".join(p.value for p in Policy)
        raise KernelConfigError(
            f"{ENVIRONMENT_VARIABLE} must be one of {choices}, got {environ[ENVIRONMENT_VARIABLE]!r}"
        ) from None


OBJECT_CACHE_VARIABLE: Final[str] = "MCPI_OBJECT_CACHE"
"""``off`` makes a worker load the fused implementation through numba even where our
object cache of its machine code is there (``kernels.native``): the load before that
cache, for comparing the two (``benchmarks/hint.py``). Any other value, or none: use it."""


def object_cache_wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``environ`` lets a worker load the fused kernels from our object cache."""
    return environ.get(OBJECT_CACHE_VARIABLE, "").strip().lower() != "off"
