"""The lane kernel alone, warm, in one process against two at once: what this machine's
two CPUs give two workers before any worker, pipe or coordinator is involved.

    python benchmarks/kernel_pair.py [--points 1e10] [--rounds 5] [--cc gcc]

Each round, interleaved (the order rotating):
- ``one``: one process counts ``--points`` points (streams of 1e7 points, as the default
  chunk size, from stream 0) with the loaded fused kernel (``choice.load_fused``: what a
  worker runs for a range), already loaded and warmed by a small range before the clock
  starts;
- ``two at once``: two such processes count the two halves of the same streams, started
  together (each loads and warms, then both are told to go at once);
- ``half alone``: one process counts one half: its CPU time against the CPU time of each
  of the two at once says whether a busy second CPU slows the first (shared core, a
  lower clock under two busy cores, shared cache or memory bandwidth).

The wall of a row is from the moment the processes are told to go to the last one's end,
on the system's monotonic clock. With a C compiler, the core's clock is read the same
way, one process alone and two at once (``kernel_reference_lanes.c clock``: a chain of
dependent one-cycle adds timed by CPU time, in GHz), and the C lane reference over the
same streams, one process and two halves at once. Printed: medians, the speed-up
``one / two at once`` (wall) and the ratios; the counts must agree. The machine may be
shared: the load average is printed, and a busy neighbour lowers the wall speed-up, much
less the CPU ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcpi_coordinator.arguments import count

WARM_NOW = "from mcpi_worker.kernels.warm import main; main(niceness=0, wait=True)"
STREAM_POINTS = 10_000_000
SEED = 20240611
LANES_SOURCE = Path(__file__).with_name("kernel_reference_lanes.c")
C_FLAGS = ["-O3", "-march=native", "-ffp-contract=off"]


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def child(first: int, streams: int) -> None:
    """One counting process: load, warm, say ready, wait for ``go``, count, report."""
    from mcpi_worker.kernels.choice import load_fused

    loaded = load_fused()
    loaded.count_streams(SEED, 10**9, 64, 100_000, lambda: False)  # warm: other streams
    print("ready", flush=True)
    sys.stdin.readline()
    started_cpu, started = time.process_time(), time.monotonic()
    inside = sum(loaded.count_streams(SEED, first, streams, STREAM_POINTS, lambda: False))
    ended, cpu = time.monotonic(), time.process_time() - started_cpu
    print(json.dumps({"started": started, "ended": ended, "cpu": cpu, "inside": inside}), flush=True)


def together(parts: list[tuple[int, int]]) -> tuple[float, list[float], int]:
    """Processes counting ``parts`` ((first, streams) each), told to go at once:
    (wall from the first start to the last end, each one's CPU seconds, the sum of counts)."""
    argv = [sys.executable, "-P", __file__, "--child"]
    processes = [
        subprocess.Popen([*argv, str(first), str(streams)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for first, streams in parts
    ]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    reports = []
    for process in processes:
        assert process.stdout is not None
        reports.append(json.loads(process.stdout.readline()))
        process.communicate()
    wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    return wall, [r["cpu"] for r in reports], sum(r["inside"] for r in reports)


def c_together(binary: Path, args: list[list[str]]) -> tuple[float, list[float], list[str]]:
    """The C program once per argument list, all at once: (wall, each one's own CPU figure
    (its second output field, or its only one), each one's first output field)."""
    started = time.monotonic()
    processes = [subprocess.Popen([str(binary), *a], stdout=subprocess.PIPE, text=True) for a in args]
    outputs = [p.communicate()[0].split() for p in processes]
    wall = time.monotonic() - started
    return wall, [float(o[-1]) for o in outputs], [o[0] for o in outputs]


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=count, default=10**10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cc", default="gcc")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    subprocess.run([sys.executable, "-P", "-c", WARM_NOW], check=True)  # numba's and the object cache
    streams = max(2, args.points // STREAM_POINTS // 2 * 2)
    half = streams // 2
    rows = {
        "one": [(0, streams)],
        "two at once": [(0, half), (half, half)],
        "half alone": [(0, half)],
    }
    print(f"the lane kernel, warm: {streams} streams x 1e7 points; {args.rounds} rounds; load average {load()}")
    walls: dict[str, list[float]] = {name: [] for name in rows}
    cpus: dict[str, list[float]] = {name: [] for name in rows}
    counts: dict[str, set[int]] = {name: set() for name in rows}
    names = list(rows)
    for round_number in range(args.rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu, inside = together(rows[name])
            walls[name].append(wall)
            cpus[name].extend(cpu)
            counts[name].add(inside)
    for name in names:
        print(
            f"  {name:12} wall {median(walls[name]):6.3f} s   CPU a process {median(cpus[name]):6.3f} s"
            f"   (walls {', '.join(f'{w:.3f}' for w in walls[name])})"
        )
    agree = len(counts["one"] | counts["two at once"]) == 1
    print(f"  counts agree (one, two at once): {agree}; load average {load()}")
    speed_up = median(walls["one"]) / median(walls["two at once"])
    contention = median(cpus["two at once"]) / median(cpus["half alone"])
    print(f"  speed-up one -> two at once, wall: {speed_up:.3f}x")
    print(f"  CPU of a half, two at once / alone: {contention:.3f}x   (1.000: the second CPU costs the first nothing)")
    print(f"  CPU of both halves / the whole alone: {2 * median(cpus['two at once']) / median(cpus['one']):.3f}x")
    if shutil.which(args.cc) is None:
        print(f"no C compiler {args.cc!r}: the clock and C rows are left out")
        return
    with tempfile.TemporaryDirectory() as build:
        binary = Path(build) / "lanes"
        subprocess.run([args.cc, *C_FLAGS, "-o", str(binary), str(LANES_SOURCE)], check=True)
        clocks: dict[str, list[float]] = {"alone": [], "two at once": []}
        c_walls: dict[str, list[float]] = {"one": [], "two at once": []}
        c_cpus: dict[str, list[float]] = {"one": [], "two at once": []}
        c_counts: set[int] = set()
        whole = [str(SEED), "0", str(streams), str(STREAM_POINTS)]
        halves = [[str(SEED), str(first), str(half), str(STREAM_POINTS)] for first in (0, half)]
        for _ in range(args.rounds):
            clocks["alone"].extend(c_together(binary, [["clock"]])[1])
            clocks["two at once"].extend(c_together(binary, [["clock"], ["clock"]])[1])
            wall, cpu, first = c_together(binary, [whole])
            c_walls["one"].append(wall)
            c_cpus["one"].extend(cpu)
            c_counts.add(int(first[0]))
            wall, cpu, first = c_together(binary, halves)
            c_walls["two at once"].append(wall)
            c_cpus["two at once"].extend(cpu)
            c_counts.add(sum(int(f) for f in first))
    alone, both = median(clocks["alone"]), median(clocks["two at once"])
    print(f"  clock, one busy CPU: {alone:.3f} GHz; two busy CPUs: {both:.3f} GHz each ({both / alone:.3f}x)")
    for name, walls_of in c_walls.items():
        print(f"  C lanes {name:12} wall {median(walls_of):6.3f} s   CPU a process {median(c_cpus[name]):6.3f} s")
    print(
        f"  C lanes speed-up one -> two at once, wall: {median(c_walls['one']) / median(c_walls['two at once']):.3f}x;"
        f" counts agree with the lane kernel's: {c_counts == counts['one']}; load average {load()}"
    )


if __name__ == "__main__":
    main()
