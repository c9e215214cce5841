"""Reading the process table: which of some processes are still running.

Orphan and crash tests must check the process table, not a flag the code under test
sets. A zombie (exited, not yet reaped by its parent) has stopped running, so it
counts as gone: whether the parent reaps it is a separate question, asked by
whoever owns the parent. Needs psutil (in the ``test`` extra).

Nor is every child of ``mcpi estimate`` a worker: with numba's cache cold it (or a
worker) starts the cache-warming process, ``python -m mcpi_worker.kernels.warm``, at the
lowest priority and meant to outlive the run (``numba_marker.start_warming``). A test
that judges "workers left" leaves it out with ``not_warming`` / ``workers_among``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mcpi_worker.constants import WARMING_MODULE

if TYPE_CHECKING:
    import psutil


def still_running(pids: Iterable[int]) -> list[int]:
    """The pids among ``pids`` that name a live process (zombies excluded), in order.

    Raises ``ImportError`` without psutil (the ``test`` extra)."""
    import psutil  # the test extra; imported here so the kit loads without it

    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running




def is_warming(process: psutil.Process) -> bool:
    """Whether ``process`` is a cache-warming process (no worker). False once it is gone
    or cannot be read. Judge it when it matters, not when first seen: for a moment after
    its fork, a child still has its parent's command line."""
    import psutil

    try:
        return WARMING_MODULE in process.cmdline()
    except psutil.Error:
        return False


def marked(variable: str, value: str) -> list[int]:
    """The live processes whose environment sets ``variable`` to ``value`` (a mark a test
    gives the command it starts, inherited by its children), but for the cache-warming
    process, which is meant to outlive the run (``is_warming``); in pid order.

    Raises ``ImportError`` without psutil (the ``test`` extra)."""
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(variable) == value and not is_warming(process):
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def not_warming(pids: Iterable[int]) -> list[int]:
    """The pids among ``pids`` that are not a cache-warming process now, in order (gone
    ones kept: ``still_running`` and ``wait_until_gone`` leave them out anyway)."""
    import psutil

    kept = []
    for pid in pids:
        try:
            warming = is_warming(psutil.Process(pid))
        except psutil.NoSuchProcess:
            warming = False
        if not warming:
            kept.append(pid)
    return kept


def workers_among(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The workers among ``processes`` (a coordinator's ``children()``): running, not
    zombies, not cache-warming processes, in order."""
    import psutil

    workers = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE and not is_warming(process):
                workers.append(process)
        except psutil.NoSuchProcess:
            pass
    return workers


def wait_until_gone(pids: Iterable[int], timeout_s: float) -> tuple[list[int], float]:
    """Poll until none of ``pids`` runs or ``timeout_s`` passes.

    Returns the pids still running (empty on success) and the seconds it took. It is
    synchronous and sleeps between polls: from Trio, run it in a thread
    (``trio.to_thread.run_sync``) or after the event loop is done. Raises as
    ``still_running`` does.
    """
    wanted = list(pids)
    start = time.monotonic()
    while (left := still_running(wanted)) and time.monotonic() - start < timeout_s:
        time.sleep(0.01)
    return left, time.monotonic() - start


def peak_rss_until_exit(process: psutil.Popen, poll_s: float = 0.02) -> int:
    """Poll ``process``'s resident memory until it exits; the highest reading, in bytes.

    Its pipes are not read meanwhile, so use it for processes whose output fits in a
    pipe buffer (a ``--json`` summary), then collect that with ``communicate()``.
    """
    import psutil

    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(poll_s)
    return peak
