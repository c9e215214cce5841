"""The worker's numbers and names that a coordinator needs: its kernels' wire names and
the versions of their definitions, its command line's bound on ``--max-inflight``, and
the protocol's bound on a request's points (which ``mcpi``'s parsers check).

They live here, in a module that imports nothing, rather than with the code they
describe (``kernels``, ``main``), because a coordinator-side module that only needs a
name or a bound (``Chunk``'s default kernel, a checkpoint's kernel version, the
``--max-inflight`` that ``mcpi estimate`` passes on) must not load the worker's kernels,
and so NumPy, or its command line, and so the whole worker. ``kernels``
and ``main`` import them from here, and so does the protocol's core (``MAX_POINTS``);
the import contracts in pyproject.toml keep the coordinator's lower layers from reaching
past this module.
"""

from __future__ import annotations

from typing import Final

KERNEL_VERSIONS: Final[dict[str, int]] = {"numpy": 1, "python": 1}
"""Each kernel a worker offers, by wire name, the default first, and the version of its
*definition*: raised whenever a kernel would count any (seed, stream, points)
differently (another generator, another inside test); never for a faster implementation
of the same counts. Counts made under different versions are not the same quantity: a
checkpoint records its kernel's version and is refused by a coordinator whose version
differs. protocol.md's kernel vectors pin version 1. ``kernels.KERNELS`` has the same
names in the same order."""

DEFAULT_KERNEL: Final[str] = next(iter(KERNEL_VERSIONS))
"""The kernel a request names when its caller names none: ``numpy``."""

MAX_POINTS: Final[int] = 1 << 40
"""Largest ``points`` one sample request may ask for (about 1.1e12; protocol.md §4's
``points`` type). Its home is here, not in ``protocol.messages`` which re-exports it,
because ``mcpi``'s parsers check ``--chunk-size`` against it and must not import the
protocol package (msgpack and its whole core) to do so."""

MAX_INFLIGHT_LIMIT: Final[int] = 1024
"""The most ``mcpi-worker --max-inflight`` accepts (protocol.md §10.5)."""

WARM_NICENESS: Final[str] = "MCPI_WARM_NICENESS"
"""The environment variable that sets how much the warming process
(``python -m mcpi_worker.kernels.warm``) lowers its priority: a whole number from 0 to
19, added to its own niceness and given its session too (``kernels.warm.niceness``);
19 when unset or not such a number. A process started with a lower value (a test on a
loaded machine, a user who wants the compile now) finishes sooner at others' expense;
at 19 it takes only CPU nobody else wants, which on a busy machine may be none."""

CACHE_WARMED_BY_PARENT: Final[str] = "MCPI_CACHE_WARMED_BY_PARENT"
"""Set to ``1`` in a worker's environment by a coordinator that warms numba's cache
itself (``mcpi estimate``, for its own local workers only): the worker then starts no
warming process of its own, which would compile the same cache a second time."""

WARMING_MODULE: Final[str] = "mcpi_worker.kernels.warm"
"""The module the cache-warming process runs (``python -m``): how its command line names
it. It is meant to outlive whoever started it, so the ``mcpi`` command's orphan pass spares
it (``mcpi_coordinator.launch.local.adopting_orphans``)."""

EXPECTED_POINTS: Final[str] = "MCPI_EXPECTED_POINTS"
"""The size hint of protocol.md §5.1 (the ``hello``'s ``expected_points``: the points in all
the coordinator expects to ask of this worker), given in a worker's environment by a
coordinator that starts it before it can send the ``hello``: ``mcpi estimate``'s workers
started as the command begins (``launch.early``), whose ``hello`` comes only once the
command has imported Trio and the pool. The worker acts on it as on the ``hello``'s, at
its own start (decimal digits, at most as many as a uint64 has; anything else is ignored)."""

START_TURN: Final[str] = "MCPI_START_TURN"
"""Set by ``mcpi estimate`` in the environment of local workers it starts together as it
begins (``mcpi_coordinator.launch.early``), when there are more of them than CPUs beside
its own: ``"WAIT,PASS"``, descriptors of inherited pipes, by which each worker waits for
the one before it to have started before it imports anything, and lets the one after it
start (``mcpi_worker.start_turn``, which spells the name out, says how and why)."""

KILLED_WITH_PARENT: Final[str] = "MCPI_KILLED_WITH"
"""Set to its own pid in a worker's environment by a coordinator that spawns it from a
thread that lasts as long as the coordinator (``mcpi_coordinator.launch.early.spawn``):
a worker whose parent is that pid asks for SIGKILL as its parent-death signal, which ends
it even when it is stopped (``mcpi_worker.boot``, which spells the name out: it imports
nothing of ours)."""
