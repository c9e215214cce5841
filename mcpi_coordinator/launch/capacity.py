"""How many workers this machine can hold, so that ``--workers`` is refused above it.

Two resources run out first, and each gives a cap:

- **Open files.** Every worker, local or ssh client, costs the coordinator
  ``FDS_PER_WORKER`` descriptors for as long as it runs, and ``FDS_PER_START`` more
  while it is being spawned. Room is kept for ``max_starting`` spawns at once, the most
  starts the pool has under way; the spawns themselves now run one after the other on
  the pool's thread (``launch.early.spawn``), so that room is more than is used. Past
  the limit, a run drowns in "Too many open files" warnings instead of starting. The
  coordinator may raise its soft limit up to the hard one (``raise_open_file_limit``),
  so the hard limit is what counts.
- **Memory.** A local worker has ``worker_memory()`` resident at its peak:
  ``WORKER_RSS_BYTES`` counting with NumPy, ``FUSED_WORKER_RSS_BYTES`` once it uses
  numba's loops (which the default ``MCPI_NUMPY_IMPL=auto`` does in every worker of a
  long run); docs/estimate.md gives the figures. The machine has ``MemAvailable``
  (or less, if our cgroup says so). Counting resident pages (shared libraries
  included) rather than a worker's unique pages errs on the safe side.

The caps are worked out from a ``MachineLimits`` value, which ``MachineLimits.here``
reads from this machine; tests inject their own.
"""

from __future__ import annotations

import importlib.util
import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from mcpi_worker import kernel_policy

if TYPE_CHECKING:
    from mcpi_coordinator.launch.remote import WorkerSlot

FDS_PER_WORKER: Final[int] = 4
"""What one running worker costs the coordinator: its stdin, stdout and stderr pipes, and
the pidfd ``launch.local.SessionProcess`` watches its exit with (``python
benchmarks/fleet.py costs`` counts them; every local worker is started by
``launch.early.spawn``, a ``subprocess.Popen``, which holds no pidfd of its own as
``trio.Process`` did)."""

FDS_PER_START: Final[int] = 5
"""Held only while a worker is being spawned: the child's ends of its three pipes and
``subprocess``'s two-ended exec-error pipe, all closed once it has started."""

FDS_RESERVED: Final[int] = 64
"""For the coordinator itself: its stdio, Trio's epoll and wake-up descriptors, the
thread cache, a plot or hosts file being read, a log. 11 are open before the first
worker starts; the rest is headroom."""

WORKER_RSS_BYTES: Final[int] = 48 * 2**20
"""The resident memory of one ``mcpi-worker`` counting with NumPy, at its peak over
samples of 1e5 to 1e9 points (``python benchmarks/fleet.py costs`` measures it;
tests/launch/test_fleet.py checks a real worker stays below it)."""

FUSED_WORKER_RSS_BYTES: Final[int] = 224 * 2**20
"""The same once the worker has loaded numba and the fused loop. A worker that finds
numba's cache empty (the first run after an install, or a new ``NUMBA_CACHE_DIR``)
compiles the loops itself, and compiling peaks far above loading from the cache; every
worker of a first run may compile at once, so the cap counts that peak
(tests/launch/test_fleet.py checks a real worker stays below it with an empty cache)."""


@dataclass(frozen=True)
class MachineLimits:
    """What the machine allows: the open-file limits and the memory at our disposal."""

    open_files_soft: int
    open_files_hard: int
    memory_available: int | None
    """Bytes a new process may still take; None where the machine does not say."""

    @classmethod
    def here(cls) -> MachineLimits:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:  # not on Linux, where nr_open bounds it
            hard = soft
        return cls(soft, hard, _memory_available())


@dataclass(frozen=True)
class FleetCap:
    """The most local workers this machine holds beside ``remote`` ssh connections, and
    the figures it was worked out from (for the one-line refusal)."""

    local: int
    remote: int
    by_files: int
    """Workers of any kind (local processes and ssh clients) the open-file limit allows."""
    by_memory: int | None
    """Local workers the memory allows; None if the machine does not say, or what a
    worker takes is not known (``worker_bytes`` None)."""
    worker_bytes: int | None
    limits: MachineLimits

    def why(self) -> str:
        files = (
            f"the open-file limit of {self.limits.open_files_hard:,} (ulimit -Hn) holds "
            f"{self.by_files:,} at {FDS_PER_WORKER} descriptors each"
        )
        if self.remote:
            files += f", {self.remote:,} of them ssh connections"
        if self.by_memory is None:
            return files
        assert self.limits.memory_available is not None and self.worker_bytes is not None
        memory = (
            f"{self.limits.memory_available / 2**20:,.0f} MiB of memory available holds "
            f"{self.by_memory:,} at {self.worker_bytes / 2**20:.0f} MiB each"
        )
        if self.by_memory <= self.by_files - self.remote:
            return f"{memory}; {files}"
        return f"{files}; {memory}"


def default_max_starting() -> int:
    """Local workers starting at once by default (``WorkerPool(max_starting=)``): two
    per CPU. A start is CPU-bound (its imports), so more at once finish no
    sooner, take CPU from the coordinator, and leave more workers between exec and
    their parent-death backstop should the coordinator die (benchmarks/fleet.py). It
    lives here, beside the open-file budget it enters, so that ``launch.early`` counts
    with it before anything heavy is loaded."""
    return 2 * (os.cpu_count() or 1)


def worker_memory(kernel: str, environ: Mapping[str, str] = os.environ) -> int:
    """The peak resident memory to count a local worker for: a ``numpy``-kernel worker
    may load the fused loop unless ``MCPI_NUMPY_IMPL=numpy`` says it never will (or
    numba is not installed, in this environment, which local workers share)."""
    if kernel != "numpy":
        return WORKER_RSS_BYTES
    try:
        if kernel_policy.policy_from_environment(environ) is kernel_policy.Policy.NUMPY:
            return WORKER_RSS_BYTES
    except kernel_policy.KernelConfigError:
        pass  # the workers will say so; count them as they may grow
    if importlib.util.find_spec("numba") is None:
        return WORKER_RSS_BYTES
    return FUSED_WORKER_RSS_BYTES


def fleet_cap(
    limits: MachineLimits,
    *,
    remote: int = 0,
    max_starting: int = 1,
    worker_bytes: int | None = WORKER_RSS_BYTES,
) -> FleetCap:
    """The cap on local workers of ``worker_bytes`` each (None: not known, so the open
    files alone cap them) beside ``remote`` ssh connections, with a pool that spawns up
    to ``max_starting`` workers at once."""
    spare = limits.open_files_hard - FDS_RESERVED - max_starting * FDS_PER_START
    by_files = max(0, spare // FDS_PER_WORKER)
    by_memory = None
    if limits.memory_available is not None and worker_bytes is not None:
        by_memory = max(0, limits.memory_available // worker_bytes)
    local = by_files - remote if by_memory is None else min(by_files - remote, by_memory)
    return FleetCap(max(0, local), remote, by_files, by_memory, worker_bytes, limits)


def check_fleet(
    local: int,
    remote: int,
    limits: MachineLimits,
    *,
    max_starting: int = 1,
    worker_bytes: int | None = WORKER_RSS_BYTES,
    asked: int | None = None,
) -> str | None:
    """One line saying why ``local`` workers and ``remote`` ssh connections are more
    than the machine holds, or None if they fit. ``asked``: the ``--workers`` the user
    gave, when the run would start fewer (``local``, those with chunks to count), so
    that the line names the number typed as well as the number refused."""
    cap = fleet_cap(limits, remote=remote, max_starting=max_starting, worker_bytes=worker_bytes)
    if remote > cap.by_files:
        return f"{remote:,} ssh connections are more than this machine can hold: {cap.why()}"
    if local <= cap.local:
        return None
    beside = f" beside {remote:,} ssh connections" if remote else ""
    workers = f"{local:,}" if asked is None or asked == local else f"{asked:,} ({local:,} of them with chunks to count)"
    return (
        f"--workers {workers} is more than this machine can hold{beside}: at most "
        f"{cap.local:,} local workers ({cap.why()})"
    )


def check_slots(
    slots: Sequence[WorkerSlot],
    limits: MachineLimits,
    *,
    max_starting: int,
    kernel: str,
    own_worker: bool = True,
    asked: int | None = None,
) -> str | None:
    """``check_fleet`` for the slots ``mcpi estimate`` plans (``remote.plan_slots``),
    its local workers counting with ``kernel`` when they run ``mcpi-worker``
    (``own_worker``). Another program's (``--worker-cmd``: a ``kubectl exec`` or ``ssh``
    client, a fake worker, a worker in another language) memory is not known, and
    counting it as a worker compiling numba's loops refused a fleet of small clients
    at a fraction of what the machine holds; its descriptors are counted all the same."""
    remote = sum(1 for slot in slots if slot.host is not None)
    worker_bytes = worker_memory(kernel) if own_worker else None
    return check_fleet(
        len(slots) - remote, remote, limits, max_starting=max_starting, worker_bytes=worker_bytes, asked=asked
    )


def raise_open_file_limit(workers: int, *, max_starting: int = 1) -> None:
    """Raise the soft open-file limit, if needed and allowed, to what ``workers``
    workers take (``check_fleet`` has already said they fit under the hard limit).
    Many systems start programs with a soft limit of 1,024 and a far higher hard one,
    which is meant to be raised by programs that need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FDS_RESERVED + max_starting * FDS_PER_START + workers * FDS_PER_WORKER
    if needed <= soft:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        pass  # then the pool's own errors say what ran out


# ------------------------------------------------------------------ reading the machine


def _memory_available(
    meminfo: Path = Path("/proc/meminfo"),
    cgroups: Path = Path("/sys/fs/cgroup"),
    membership: Path = Path("/proc/self/cgroup"),
) -> int | None:
    """MemAvailable, or the room left under our cgroup's memory limit if smaller."""
    available: int | None = None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    room = _cgroup_room(cgroups, membership)
    if room is not None and (available is None or room < available):
        return room
    return available


def _cgroup_room(cgroups: Path, membership: Path) -> int | None:
    """The room left under this process's cgroup memory limit (v2 ``memory.max``, or
    v1 ``memory.limit_in_bytes``), if it has one."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            group, files = cgroups / path.lstrip("/"), ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            group = cgroups / "memory" / path.lstrip("/")
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        try:
            limit = (group / files[0]).read_text().strip()
            if limit != "max":
                rooms.append(max(0, int(limit) - int((group / files[1]).read_text())))
        except (OSError, ValueError):
            continue
    return min(rooms, default=None)
