"""The cyclic garbage collector held off while a process imports what it runs.

An import allocates thousands of objects that live as long as the process (modules,
classes, functions, the methods that dataclasses and attrs generate), and every 700
allocations set off a collection that walks the young ones and finds next to no
garbage: a noticeable part of a start that is on the way to the first count (a worker's,
while two workers share two cores with their coordinator's own start:
``benchmarks/sched_timeline.py``; the command's, most of a small run's wall:
``benchmarks/tiny.py``). Both ways in use it: ``mcpi_worker.boot`` around the worker's
imports, ``mcpi_coordinator.cli.boot`` around ``mcpi estimate``'s. Hold it around imports
only, never around work: whatever cyclic garbage is made while it is held is frozen by
``release`` and never freed. Imports only the standard library's ``gc``.
"""

from __future__ import annotations

import gc

_held: list[bool] = []


def hold() -> None:
    """Turn the collector off, if it is on (``release`` turns it back on)."""
    if gc.isenabled():
        gc.disable()
        _held.append(True)


def release() -> None:
    """Turn the collector back on if ``hold`` turned it off, with what was made meanwhile
    moved out of its sight first (``gc.freeze``): what imports make lives as long as the
    process, and the first collection would otherwise walk every object of it; garbage
    among it is never freed. Does nothing elsewhere (the
    process run from Python, its tests)."""
    if _held:
        _held.clear()
        gc.freeze()
        gc.enable()
