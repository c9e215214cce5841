"""trio-pool against ProcessPoolExecutor on the same seeded chunks, at 1e8+ points.

Issue 4's target: trio-pool's wall time in ``mcpi bench approaches`` is at most 1.05x
process-pool's at 1e8 points and more. This runs exactly those two approaches
(mcpi_coordinator.bench: same chunks as ``mcpi estimate``, same numpy kernel),
``--rounds`` rounds in rotating order; in each round an approach starts its pool once
and times ``--repeat`` runs on it (the round's figure is their median). It prints the
medians over rounds and the ratio for each point count. Runs at 1e8 points last
~0.15 s here, so a single run is mostly noise on a shared machine: keep ``--repeat``.

A third contender, ``process-pool/setsid``, is the same executor with each worker in
a session of its own (``initializer=os.setsid``), as mcpi-worker is. On a loaded
Linux machine this matters more than anything measured here: with scheduler
autogrouping (``/proc/sys/kernel/sched_autogroup_enabled``), CPU time is shared
fairly between *sessions*, so two workers in two new sessions get up to twice the
CPU of two workers sharing the caller's session. On an idle machine the three agree.

Both are persistent pools, timed after start-up as ``mcpi bench approaches`` does.
Start-up is printed as well, with the "cold" ratio (start-up + one run), because a
script that starts a pool for one job pays it: ProcessPoolExecutor forks this
interpreter (NumPy already imported); mcpi-worker is a fresh interpreter that
imports NumPy itself.

    python benchmarks/approaches.py [--points 1e8,1e9] [--rounds 5] [--repeat 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from functools import partial

from mcpi_coordinator.bench import in_process
from mcpi_coordinator.bench.approaches import APPROACHES
from mcpi_coordinator.bench.measure import Measurement
from mcpi_coordinator.bench.workload import Workload
from mcpi_coordinator.cli.logging import configure_logging
from mcpi_coordinator.launch.local import default_worker_command
from mcpi_coordinator.run.estimate import DEFAULT_CHUNK_SIZE

REFERENCE = "process-pool"
SAME_FOOTING = "process-pool/setsid"
OURS = "trio-pool"
TARGET = 1.05

CONTENDERS: dict[str, Callable[[Workload, int], Measurement]] = {
    REFERENCE: APPROACHES[REFERENCE],
    SAME_FOOTING: partial(in_process.process_pool, initializer=os.setsid),
    OURS: APPROACHES[OURS],
}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", default="1e8,1e9", help="comma-separated point counts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per pool start")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    configure_logging()

    autogroup = _autogroup()
    print(f"approaches: {', '.join(CONTENDERS)}, {args.workers} workers, chunks of {args.chunk_size:,}, numpy kernel")
    print(f"before: {load()}; scheduler autogroup: {autogroup}")
    verdicts = []
    for points in (int(float(p)) for p in args.points.split(",")):
        workload = Workload(
            points=points,
            seed=args.seed,
            kernel="numpy",
            chunk_size=args.chunk_size,
            workers=args.workers,
            worker_command=tuple(default_worker_command()),
        )
        runs: dict[str, list[Measurement]] = {name: [] for name in CONTENDERS}
        names = list(CONTENDERS)
        for round_index in range(args.rounds):
            shift = round_index % len(names)  # rotate who goes first
            for name in names[shift:] + names[:shift]:
                measurement = CONTENDERS[name](workload, args.repeat)
                runs[name].append(measurement)
                print(
                    f"  {points:.0e} round {round_index + 1} {name:<19} wall {measurement.wall_s:7.3f} s"
                    f"  start-up {measurement.startup_s:6.3f} s  inside {min(measurement.counts)}",
                    flush=True,
                )
        counts = {c for ms in runs.values() for m in ms for c in m.counts}
        assert len(counts) == 1, f"the approaches disagree: {counts}"


        for name in CONTENDERS:
            startup = statistics.median(m.startup_s or 0.0 for m in runs[name])
            print(
                f"  {points:.0e} median {name:<19} wall {median_wall(runs[name]):7.3f} s "
                f"({points / median_wall(runs[name]):.3g} points/s)"
                f"  start-up {startup:6.3f} s"
            )
        for reference in (REFERENCE, SAME_FOOTING):
            warm = median_wall(runs[OURS]) / median_wall(runs[reference])
            cold = median_wall(runs[OURS], cold=True) / median_wall(runs[reference], cold=True)
            print(f"  {points:.0e} {OURS} / {reference}: {warm:.3f}x after start-up, {cold:.3f}x cold")
            verdicts.append((points, reference, warm))
        print()

    print(f"target (issue 4): {OURS} wall <= {TARGET}x {REFERENCE} at 1e8+ points")
    for points, reference, ratio in verdicts:
        print(f"  {points:.0e} against {reference:<19} {ratio:.3f}x  {'MET' if ratio <= TARGET else 'NOT MET'}")
    print(f"after: {load()}")


def _autogroup() -> str:
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as flag:
            return "on" if flag.read().strip() == "1" else "off"
    except OSError:
        return "unknown (not Linux?)"


def median_wall(measurements: list[Measurement], cold: bool = False) -> float:
    """Median wall time; ``cold`` adds each pool's start-up, as a one-job script pays it."""
    return statistics.median(m.wall_s + ((m.startup_s or 0.0) if cold else 0.0) for m in measurements)


if __name__ == "__main__":
    main()
