"""How many CPUs this process may really use: what ``mcpi-worker --jobs auto`` means.

``os.cpu_count()`` counts the machine's CPUs, not ours. Three things narrow it, and the
smallest wins:

- the affinity mask (``taskset``, a batch system's CPU binding): ``sched_getaffinity``;
- a cgroup CPU quota (containers, systemd slices, Kubernetes limits): cgroup v2's
  ``cpu.max`` ("200000 100000" is two CPUs' worth), or v1's ``cpu.cfs_quota_us`` over
  ``cpu.cfs_period_us``; rounded up, since a quota of 1.5 CPUs still runs two threads
  for part of the time;
- Slurm's ``SLURM_CPUS_PER_TASK``: on a cluster without cgroup confinement the task
  sees every CPU of the node, and this is the only place its share is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")


def usable_cpus(
    *,
    affinity: Callable[[], int] | None = None,
    cgroup_root: Path = CGROUP_ROOT,
    environ: Mapping[str, str] = os.environ,
) -> int:
    """The number of CPUs this process may use, at least 1."""
    limits = [affinity() if affinity is not None else _affinity()]
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        limits.append(math.ceil(quota))
    slurm = environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits.append(int(slurm))
    return max(1, min(limits))


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time our cgroup may use per period, or None without a quota."""
    for relative in _own_cgroups():
        for directory in (root / relative.lstrip("/"), root / "cpu" / relative.lstrip("/"), root):
            quota = _read_quota(directory)
            if quota is not None:
                return quota
    return _read_quota(root)


def _own_cgroups() -> list[str]:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    return [line.split(":", 2)[2] for line in lines if line.count(":") >= 2]


def _read_quota(directory: Path) -> float | None:
    try:
        text = (directory / "cpu.max").read_text().split()
        if len(text) == 2 and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
