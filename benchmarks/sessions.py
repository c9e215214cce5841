"""Does a worker's session change the pool's figures on a busy machine?

mcpi starts each worker in a session of its own (``launch.local.spawn_worker``), and
with scheduler autogrouping (``/proc/sys/kernel/sched_autogroup_enabled`` = 1) Linux
shares CPU time between sessions first, so each worker is a scheduling group of its
own. This measures a 0-point sample through ``WorkerPool`` with the workers started as
mcpi starts them and, interleaved round by round, started in the coordinator's session
instead: a process group of their own (``process_group=0``), no new session, the same
autogroup as the coordinator. Per way and round: the round trip of ``--tasks`` samples
sent one at a time, as its median, 90th percentile and mean (a sequence of small
requests takes the mean times their number, so the mean is what it costs), and the
rate of ``--tasks`` samples through ``imap_unordered`` (``mcpi bench overhead``'s
``trio-pool/sample``). ``--busy N`` runs it beside N CPU-bound loops
(benchmarks/busy_loops.py), each in a session of its own or, with
``--busy-same-session``, in this one. docs/bench.md ("A busy machine") has the figures.

    python benchmarks/sessions.py [--tasks 5000] [--rounds 3] [--workers 2] [--busy N] [--busy-same-session]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass

import trio
from busy_loops import add_busy_arguments, busy_loops, described

from mcpi_coordinator.bench.overhead import EMPTY_CHUNK, trio_pool_sample
from mcpi_coordinator.cli.logging import configure_logging
from mcpi_coordinator.launch.local import SessionProcess, default_worker_command
from mcpi_coordinator.launch.transport import Launcher, WorkerProcess
from mcpi_coordinator.pool.worker_pool import WorkerPool


async def in_the_coordinators_session(_index: int) -> WorkerProcess:
    """A worker as ``spawn_worker`` starts one, but in a new process group of this session."""
    argv = default_worker_command()
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0
    )
    return SessionProcess(process, argv)


WAYS: dict[str, Launcher | None] = {
    "a session of its own each (mcpi)": None,  # the pool's own launcher
    "the coordinator's session": in_the_coordinators_session,
}


@dataclass(frozen=True)
class Figures:
    median_us: float
    p90_us: float
    mean_us: float
    per_s: float


def round_trips_ns(tasks: int, workers: int, launcher: Launcher | None) -> list[int]:
    """Each of ``tasks`` 0-point samples' round trip, sent one at a time after a warm-up."""

    async def measure() -> list[int]:
        async with WorkerPool(workers, launcher=launcher) as pool:
            for _ in range(4 * workers):
                await pool.sample(EMPTY_CHUNK)
            samples = []
            for _ in range(tasks):
                started = time.perf_counter_ns()
                await pool.sample(EMPTY_CHUNK)
                samples.append(time.perf_counter_ns() - started)
            return samples

    return trio.run(measure)


def figures(tasks: int, workers: int, launcher: Launcher | None) -> Figures:
    samples = [ns / 1000 for ns in round_trips_ns(tasks, workers, launcher)]
    rate = trio_pool_sample(tasks, workers, launcher=launcher).tasks_per_s or 0.0
    p90 = statistics.quantiles(samples, n=10)[-1]
    return Figures(statistics.median(samples), p90, statistics.fmean(samples), rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    add_busy_arguments(parser)
    args = parser.parse_args()
    configure_logging()
    with busy_loops(args.busy, same_session=args.busy_same_session):
        print(f"0-point samples: {args.tasks} per figure, {args.workers} workers, {args.rounds} rounds")
        print(f"  {described(args.busy, same_session=args.busy_same_session)}, load {os.getloadavg()[0]:.1f}")
        print(f"  {'workers in':<34} {'median':>8} {'p90':>8} {'mean':>8} (round trip, us) {'rate':>9}")
        rounds: dict[str, list[Figures]] = defaultdict(list)
        names = list(WAYS)
        for round_index in range(args.rounds):
            shift = round_index % len(names)  # rotating order: neither always runs first
            for name in names[shift:] + names[:shift]:
                rounds[name].append(seen := figures(args.tasks, args.workers, WAYS[name]))
                print(f"  round {round_index + 1} {name:<26} {_row(seen)}", flush=True)
        print(f"medians over {args.rounds} rounds (load {os.getloadavg()[0]:.1f} after):")
        medians = {
            name: Figures(
                *(statistics.median(getattr(f, field) for f in seen) for field in Figures.__dataclass_fields__)
            )
            for name, seen in rounds.items()
        }
        for name, median in medians.items():
            print(f"  {name:<34} {_row(median)}")
        ours, other = medians[names[0]], medians[names[1]]
        print(
            f"  {names[1]} / {names[0]}: median {other.median_us / ours.median_us:.2f}x,"
            f" mean {other.mean_us / ours.mean_us:.2f}x, rate {other.per_s / ours.per_s:.2f}x"
        )


def _row(seen: Figures) -> str:
    return f"{seen.median_us:8.1f} {seen.p90_us:8.1f} {seen.mean_us:8.1f} {'':16} {seen.per_s:9,.0f}/s"


if __name__ == "__main__":
    main()
