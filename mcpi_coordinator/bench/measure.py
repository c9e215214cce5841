"""Timing records shared by every approach: one timed run, and an approach's measurement."""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar, TypeVarTuple, Unpack

import trio

from mcpi_coordinator.bench import off_main

E = TypeVar("E", bound=Executor)
R = TypeVar("R")
Args = TypeVarTuple("Args")


def run_trio(async_fn: Callable[[Unpack[Args]], Awaitable[R]], *args: *Args) -> R:
    """``trio.run(async_fn, *args)`` with Ctrl-C raised only at a checkpoint: the way every
    ``mcpi bench`` measurement runs Trio.

    Why: by default Trio raises ``KeyboardInterrupt`` wherever the main task runs
    unprotected code, and ``Nursery.start_soon`` is not protected: a Ctrl-C landing
    inside it (between the new task being counted by the run and being scheduled) left a
    task that never ran, and ``trio.run`` ended in ``TrioInternalError`` (an
    ``AssertionError`` in ``finalize_remaining``) with a traceback and exit 1 instead of
    the quiet exit 130. The measurements start thousands of tasks in tight loops, so a
    stopped ``mcpi bench overhead`` could hit that window. Every loop here awaits
    the pool at each turn, so a Ctrl-C is still taken within one task's time.
    Raises what ``async_fn`` raises, and ``KeyboardInterrupt`` on Ctrl-C."""
    return trio.run(async_fn, *args, restrict_keyboard_interrupt_to_checkpoints=True)


@contextmanager
def dropping_queued_work(executor: E) -> Iterator[E]:
    """``executor`` for the block, shut down when it ends with the work still queued
    cancelled. Leaving ``with executor`` waits for every task submitted, and a map
    submits all of them at once: interrupted (Ctrl-C, SIGTERM) while it submitted or
    worked, ``mcpi bench`` waited for the whole workload before it could stop. Only
    the tasks already handed to a worker are waited for.

    Run off the main thread (``off_main.off_main_thread``), the block's executor is also
    the run's to shut down without waiting, on a stop signal (``off_main.on_stop``).
    Raises ``off_main.Stopped`` if that run has been stopped already."""
    with off_main.on_stop(functools.partial(executor.shutdown, wait=False, cancel_futures=True)):
        try:
            yield executor
        except BaseException:
            # Shut down by a stop already, or broken: no work is left to wait for.
            with contextlib.suppress(RuntimeError):
                executor.shutdown(wait=True, cancel_futures=True)
            raise
    executor.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class Run:
    """One timed run of a whole workload."""

    wall_s: float
    inside: int


@dataclass(frozen=True, slots=True)
class Measurement:
    """``runs`` of one approach; ``startup_s`` is the one-time pool start, when it has one.

    Persistent pools (process-pool, trio-pool) are started and warmed before the clock
    runs, and their start-up is reported on its own: a pool is started once and then
    serves many workloads, so charging its start to one run would measure the start,
    not the approach. Per-chunk-process approaches pay a start per chunk inside the
    wall time, because that *is* the approach.
    """

    approach: str
    startup_s: float | None
    runs: tuple[Run, ...]

    @property
    def wall_s(self) -> float:
        return statistics.median(run.wall_s for run in self.runs)

    @property
    def counts(self) -> frozenset[int]:
        """Every distinct ``inside`` the runs reported: one value when they agree."""
        return frozenset(run.inside for run in self.runs)


def timed(work: Callable[[], int]) -> Run:
    started = time.perf_counter()
    inside = work()
    return Run(wall_s=time.perf_counter() - started, inside=inside)


async def timed_async(work: Callable[[], Awaitable[int]]) -> Run:
    started = time.perf_counter()
    inside = await work()
    return Run(wall_s=time.perf_counter() - started, inside=inside)
