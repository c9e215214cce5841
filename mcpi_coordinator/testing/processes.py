"""Reading the process table: which of some processes are still running.

Orphan and crash tests must check the process table, not a flag the code under test
sets. A zombie (exited, not yet reaped by its parent) has stopped running, so it
counts as gone: whether the parent reaps it is a separate question, asked by
whoever owns the parent. Needs psutil (in the ``test`` extra).
"""

from __future__ import annotations

import time
from collections.abc import Iterable


def still_running(pids: Iterable[int]) -> list[int]:
    """The pids among ``pids`` that name a live process (zombies excluded)."""
    import psutil  # the test extra; imported here so the kit loads without it

    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


def wait_until_gone(pids: Iterable[int], timeout_s: float) -> tuple[list[int], float]:
    """Poll until none of ``pids`` runs or ``timeout_s`` passes.

    Returns the pids still running (empty on success) and the seconds it took.
    """
    wanted = list(pids)
    start = time.monotonic()
    while (left := still_running(wanted)) and time.monotonic() - start < timeout_s:
        time.sleep(0.01)
    return left, time.monotonic() - start
