"""What resumable and verified runs cost: ``--checkpoint`` and ``--verify 0.01`` against
the same run with neither.

On one started pool (2 workers), ``run_estimate`` over 1e10 points at the default chunk
size (1000 chunks), the three in rotating order, ``--rounds`` times;
medians, ratios, the load average. A whole-run wall time moves by several percent
between rounds on a shared machine, more than the 1% targets, so each cost is also
measured directly:

- the checkpoint's own seconds (creating the file, recording each chunk, its batched
  commits, closing it) as a share of the run's wall time: the < 1% target;
- the workers' compute (their own measure of the seconds spent in the kernel, summed)
  with ``--verify 0.01`` against without: the checks' own cost, the checked chunks
  counted twice and alone (one stream at a time, where the rest go as ranges).

    python benchmarks/runs.py [--points 1e10] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from mcpi_coordinator.arguments import count
from mcpi_coordinator.cli.logging import configure_logging
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.run.checkpoint import Checkpoint, RunParameters
from mcpi_coordinator.run.estimate import DEFAULT_CHUNK_SIZE, run_estimate

SEED = 20240611


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} CPUs"


class TimedCheckpoint(Checkpoint):
    """A checkpoint that adds up the seconds spent in it."""

    spent_s = 0.0

    def _timed(self, method: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return method(*args)
        finally:
            TimedCheckpoint.spent_s += time.perf_counter() - started

    def record(self, stream: int, inside: int) -> None:
        self._timed(super().record, stream, inside)

    def commit(self) -> None:
        self._timed(super().commit)

    def close(self) -> None:
        self._timed(super().close)


@dataclass
class Runs:
    """One contender's figures over the rounds."""

    wall_s: list[float] = field(default_factory=list)
    busy_s: list[float] = field(default_factory=list)
    """Seconds the workers spent computing, by their own measure, summed."""
    computed: list[int] = field(default_factory=list)
    """Points the workers and the coordinator computed (the count's own, and checks)."""
    inside: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    share: list[float] = field(default_factory=list)
    """The checkpoint's own seconds as a share of the wall time."""


def busy(pool: WorkerPool) -> float:
    return sum(worker.busy_s for worker in pool.stats.workers)


def computed(pool: WorkerPool) -> int:
    return sum(worker.points for worker in pool.stats.workers)


async def timed_run(pool: WorkerPool, points: int, name: str, directory: Path, runs: Runs) -> None:
    TimedCheckpoint.spent_s = 0.0
    busy_before, computed_before = busy(pool), computed(pool)
    started = time.perf_counter()
    checkpoint = None
    if name == "--checkpoint":
        parameters = RunParameters(SEED, points, DEFAULT_CHUNK_SIZE, "numpy", None)
        checkpoint = TimedCheckpoint.create(directory / f"run-{time.monotonic_ns()}.db", parameters)
        TimedCheckpoint.spent_s += time.perf_counter() - started
    verify = 0.01 if name == "--verify 0.01" else 0.0
    try:
        result = await run_estimate(pool, points=points, seed=SEED, checkpoint=checkpoint, verify=verify)
    finally:
        if checkpoint is not None:
            checkpoint.close()
    wall = time.perf_counter() - started
    runs.wall_s.append(wall)
    runs.busy_s.append(busy(pool) - busy_before)
    local = 0 if result.verification is None else result.verification.local_checks * DEFAULT_CHUNK_SIZE
    runs.computed.append(computed(pool) - computed_before + local)
    runs.inside.add(result.inside)
    if checkpoint is not None:
        runs.share.append(TimedCheckpoint.spent_s / wall)
        spent_ms = TimedCheckpoint.spent_s * 1e3
        runs.notes.append(f"{spent_ms:.1f} ms in the checkpoint, {checkpoint.commits} commits")
    if result.verification is not None:
        runs.notes.append(f"{result.verification.verified_chunks} chunks checked")


CONTENDERS = ("plain", "--checkpoint", "--verify 0.01")


async def measure(points: int, rounds: int, workers: int) -> None:
    print(f"{points:.0e} points, chunks of {DEFAULT_CHUNK_SIZE:.0e}, {workers} workers, "
          f"{rounds} rounds; {load()}")
    runs = {name: Runs() for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as directory:
        async with WorkerPool(workers) as pool:
            for round_number in range(rounds):
                shift = round_number % len(CONTENDERS)
                for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
                    await timed_run(pool, points, name, Path(directory), runs[name])
                    note = f" ({runs[name].notes[-1]})" if runs[name].notes else ""
                    print(f"  round {round_number + 1}: {name:14} {runs[name].wall_s[-1]:7.2f} s wall, "
                          f"{runs[name].busy_s[-1]:7.2f} s of worker compute{note}; {load()}")
    print()
    plain = runs["plain"]
    for name in CONTENDERS:
        r = runs[name]
        walls = ", ".join(f"{t:.2f}" for t in r.wall_s)
        print(f"  {name:14} median wall {statistics.median(r.wall_s):7.3f} s ({walls}), "
              f"compute {statistics.median(r.busy_s):7.2f} s")
        def ratio(figures: Callable[[Runs], list[Any]], r: Runs = r) -> float:
            return float(statistics.median(figures(r)) / statistics.median(figures(plain)))

        print(f"  {'':14} ratios to plain: wall {ratio(lambda x: x.wall_s):.4f}, "
              f"compute {ratio(lambda x: x.busy_s):.4f}, points computed {ratio(lambda x: x.computed):.4f}")
    share = 100 * statistics.median(runs["--checkpoint"].share)
    print(f"  time inside the checkpoint: median {share:.3f}% of wall   (target < 1%)")
    every = set().union(*(r.inside for r in runs.values()))
    print(f"  same count every run: {len(every) == 1} ({sorted(every)}); {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=count, default=10**10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    configure_logging("warning")
    trio.run(measure, args.points, args.rounds, args.workers)


if __name__ == "__main__":
    main()
