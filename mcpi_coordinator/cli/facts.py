"""The numbers and names ``mcpi``'s parsers show and check, here so that parsing imports
none of the heavy modules that own them.

What a module that imports nothing heavy owns is imported from it, not copied: the
kernels' names, ``--max-inflight``'s bound and the protocol's most points a request
(``mcpi_worker.constants``), the log levels and formats (``mcpi_worker.logs``, which
imports structlog only for a line it writes). The other owners load what ``--help``,
``--version``, a usage error or a TAB completion has no use for: the protocol package
(msgpack and its whole core), the pool and the ssh launcher (Trio), and
``launch.early``, home of the estimate's default points and chunk size (subprocess,
threading and dataclasses, which would slow the parsing of ``mcpi scatter`` and ``mcpi
bench``; ``mcpi estimate`` loads it anyway). Those values are copies, each named after
its owner, and ``tests/cli/test_cli_startup.py`` holds every copy equal to its owner, so
a change to one fails the tests until both agree.
"""

from __future__ import annotations

from typing import Final

from mcpi_worker import logs
from mcpi_worker.constants import DEFAULT_KERNEL, KERNEL_VERSIONS, MAX_INFLIGHT_LIMIT, MAX_POINTS

__all__ = [
    "DEFAULT_CHUNK_SIZE", "DEFAULT_KERNEL", "DEFAULT_PIPELINE_DEPTH", "DEFAULT_POINTS", "DEFAULT_REMOTE_COMMAND",
    "INSTALL_HINT", "KERNEL_NAMES", "LOG_FORMATS", "LOG_LEVELS", "MAX_FRAMES", "MAX_INFLIGHT_LIMIT", "MAX_POINTS",
    "MAX_SCATTER_POINTS", "MAX_WORKERS_PER_HOST", "SPEC_SYNTAX",
]  # fmt: skip

DEFAULT_POINTS: Final[int] = 1_000_000_000
"""``mcpi_coordinator.launch.early.DEFAULT_POINTS`` (``estimate.DEFAULT_POINTS``)."""
DEFAULT_CHUNK_SIZE: Final[int] = 10_000_000
"""``mcpi_coordinator.launch.early.DEFAULT_CHUNK_SIZE`` (``estimate.DEFAULT_CHUNK_SIZE``)."""
KERNEL_NAMES: Final[tuple[str, ...]] = tuple(KERNEL_VERSIONS)
"""The kernels' names, the default first (``mcpi_worker.constants``, light, is their home)."""
DEFAULT_PIPELINE_DEPTH: Final[int] = 2
"""``mcpi_coordinator.pool.worker_pool.DEFAULT_PIPELINE_DEPTH``."""
MAX_WORKERS_PER_HOST: Final[int] = 1024
"""``mcpi_coordinator.launch.remote.MAX_WORKERS_PER_HOST``."""
SPEC_SYNTAX: Final[str] = "[user@]host[:port][*N]"
"""``mcpi_coordinator.launch.remote.SPEC_SYNTAX``."""
DEFAULT_REMOTE_COMMAND: Final[str] = "mcpi-worker"
"""``mcpi_coordinator.launch.remote.DEFAULT_REMOTE_COMMAND``."""
LOG_LEVELS: Final[tuple[str, ...]] = tuple(logs.LOG_LEVELS)
"""The log levels' names, least severe first (``mcpi_worker.logs``, light, is their home)."""
LOG_FORMATS: Final[tuple[str, ...]] = logs.LOG_FORMATS

# The drawing options' own values: ``cli.plots`` takes them from here (one home).
INSTALL_HINT: Final[str] = "pip install -e '.[bench]' in mcpi's source tree"
"""Installed from a clone (README), as mcpi is: the distribution, mcpi-trio, is not
installed from a package index, so ``pip install 'mcpi-trio[bench]'`` would fail or find
somebody else's package."""
MAX_SCATTER_POINTS: Final[int] = 1_000_000
"""Beyond this the quadrant is a solid fill: more points only cost memory and time."""
MAX_FRAMES: Final[int] = 200
"""Every GIF frame is held in memory (Pillow merges them on save), so memory grows with
the frames: this bounds it."""
