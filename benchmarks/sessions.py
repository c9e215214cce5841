"""Does a worker's session change the pool's figures on a busy machine?

mcpi starts each worker in a session of its own (``launch.local.spawn_worker``), and
with scheduler autogrouping (``/proc/sys/kernel/sched_autogroup_enabled`` = 1) Linux
shares CPU time between sessions first, so each worker is a scheduling group of its
own. This measures ``trio-pool/sample`` (``mcpi bench overhead``'s 0-point sample: its
round trip, and its rate through ``imap_unordered``) with the workers started as mcpi
starts them and, interleaved round by round, started in the coordinator's session
instead: a process group of their own (``process_group=0``), no new session, the
same autogroup as the coordinator. ``--busy N`` runs it beside N CPU-bound loops
(benchmarks/busy_loops.py), each in a session of its own or, with
``--busy-same-session``, in this one. docs/bench.md ("A busy machine") has the figures.

    python benchmarks/sessions.py [--tasks 10000] [--rounds 3] [--workers 2] [--busy N] [--busy-same-session]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
from collections import defaultdict
from collections.abc import Callable
from functools import partial

import trio
from busy_loops import add_busy_arguments, busy_loops, described

from mcpi_coordinator.bench.overhead import Overhead, trio_pool_sample
from mcpi_coordinator.cli.logging import configure_logging
from mcpi_coordinator.launch.local import SessionProcess, default_worker_command
from mcpi_coordinator.launch.transport import WorkerProcess


async def in_the_coordinators_session(_index: int) -> WorkerProcess:
    """A worker as ``spawn_worker`` starts one, but in a new process group of this session."""
    argv = default_worker_command()
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0
    )
    return SessionProcess(process, argv)


WAYS: dict[str, Callable[[int, int], Overhead]] = {
    "a session of its own each (mcpi)": trio_pool_sample,
    "the coordinator's session": partial(trio_pool_sample, launcher=in_the_coordinators_session),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    add_busy_arguments(parser)
    args = parser.parse_args()
    configure_logging()
    with busy_loops(args.busy, same_session=args.busy_same_session):
        print(
            f"trio-pool/sample: {args.tasks} 0-point samples per figure, {args.workers} workers, {args.rounds} rounds"
        )
        print(f"  {described(args.busy, same_session=args.busy_same_session)}, load {os.getloadavg()[0]:.1f}")
        figures: dict[str, list[Overhead]] = defaultdict(list)
        names = list(WAYS)
        for round_index in range(args.rounds):
            shift = round_index % len(names)  # rotating order: neither always runs first
            for name in names[shift:] + names[:shift]:
                figures[name].append(result := WAYS[name](args.tasks, args.workers))
                print(
                    f"  round {round_index + 1} {name:<34} {result.round_trip_us:7.1f} us {result.tasks_per_s:9,.0f}/s"
                )
        print(f"medians over {args.rounds} rounds (load {os.getloadavg()[0]:.1f} after):")
        medians = {
            name: (
                statistics.median(r.round_trip_us or 0.0 for r in runs),
                statistics.median(r.tasks_per_s or 0.0 for r in runs),
            )
            for name, runs in figures.items()
        }
        ours_rt, ours_tp = medians[names[0]]
        for name, (rt, tp) in medians.items():
            print(f"  {name:<34} {rt:7.1f} us ({rt / ours_rt:.2f}x) {tp:9,.0f}/s ({tp / ours_tp:.2f}x)")


if __name__ == "__main__":
    main()
