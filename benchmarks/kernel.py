"""Points per CPU second on one core: our kernels beside the references, in the same run.

    python benchmarks/kernel.py [--repeat 7] [--numpy-points 5e7] [--python-points 1e6]
                                [--cc gcc] [--startup-rounds 5] [--no-ranges]

Single stream (all but the last four rows count the very same points: seed, stream 0 of
the numpy kernel's definition, protocol.md §11.2; the table says whether they agree):
- ``numba-fused``: the numpy kernel's single-stream loop (fused.py).
- ``numpy``: the numpy kernel's NumPy implementation, the fallback.
- ``C, one loop``: the definition as one plain C loop, compiled here with
  ``-O3 -march=native -ffp-contract=off`` (kernel_reference.c).
- ``C, two passes``: the same C, generating 256 outputs before testing them (the test
  loop then vectorises): what this machine does with one stream, the target.
- ``numpy, Generator.random(float32)``: the same points drawn the obvious way.
- ``numpy, np.random.random float64``: the plain NumPy reference (legacy generator).
- ``python kernel``, ``lesson loop``: the pure-Python loops.

Ranges (protocol v2; unless ``--no-ranges``): whole ranges of streams, each stream's
seeding included, at 1e4, 1e6 and 1e7 points a stream (8192, 64 and 64 streams):
- ``lanes``: the numpy kernel's range loop (lanes.py), what a worker runs.
- ``C lanes``: the definition for a range in C, 64 streams in SIMD lanes, seeding in C
  too (kernel_reference_lanes.c, same flags): the reference.
- ``fused_range``: the range loop before the lanes, stream by stream (the single loop).
The counts (summed over the range) must agree.

Every figure is process CPU time (the machine may be shared: a busy neighbour slows the
wall clock, much less the CPU time), median of ``--repeat`` interleaved rounds (each
round runs every row once, in rotating order). The C rows time the loop inside the C
program (no process start). Points per cycle divide by the core's clock measured in the
same run (kernel_reference_lanes.c ``clock``: a chain of dependent one-cycle adds).
Then, unless ``--startup-rounds 0``: fresh ``mcpi-worker`` processes answering one
1e6-point sample, under each policy, from start to that result and to their exit after
end of input, with what the worker logged the fused load took: from a warm cache, and
compiling into an empty cache directory. The load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from blocking_worker import BlockingWorker

from mcpi_worker.kernels import (
    BLOCK_POINTS,
    NUMPY_KERNEL,
    Implementation,
    count_numpy,
    count_python,
    stream_seed_sequence,
)
from mcpi_worker.kernels.base import sfc64_state
from mcpi_worker.protocol import PROTOCOL_VERSIONS, Result, Sample

SEED = 20240601
REFERENCE_SOURCE = Path(__file__).with_name("kernel_reference.c")
LANES_SOURCE = Path(__file__).with_name("kernel_reference_lanes.c")
RANGES = ((8192, 10_000), (64, 1_000_000), (64, 10_000_000))
"""(streams, points a stream) of the range rows: >= 64 streams at 1e4, 1e6, 1e7 points."""
C_FLAGS = ["-O3", "-march=native", "-ffp-contract=off"]

Run = Callable[[int], tuple[float, int]]
"""``run(points) -> (seconds, inside)``."""


def timed(count: Callable[[int], int]) -> Run:
    def run(points: int) -> tuple[float, int]:
        started = time.process_time()
        inside = count(points)
        return time.process_time() - started, inside

    return run


def lesson_loop(points: int) -> int:
    inside = 0
    for _ in range(points):
        x = random.random()
        y = random.random()
        if x * x + y * y < 1.0:
            inside += 1
    return inside


def numpy_generator_float32(points: int) -> int:
    generator = np.random.Generator(np.random.SFC64(stream_seed_sequence(SEED, 0)))
    inside = 0
    for start in range(0, points, BLOCK_POINTS):
        n = min(BLOCK_POINTS, points - start)
        xy = generator.random(2 * n, dtype=np.float32).reshape(n, 2)
        inside += int(np.count_nonzero((xy * xy).sum(axis=1) < np.float32(1)))
    return inside


def numpy_random_float64(points: int) -> int:
    inside = 0
    for start in range(0, points, BLOCK_POINTS):
        n = min(BLOCK_POINTS, points - start)
        x = np.random.random(n)
        y = np.random.random(n)
        inside += int(np.count_nonzero(x * x + y * y < 1.0))
    return inside


def compile_reference(compiler: str, directory: Path, source: Path = REFERENCE_SOURCE) -> Path | None:
    """A C reference, built with ``compiler``; None (and a note) where there is none."""
    if shutil.which(compiler) is None:
        print(f"no C compiler {compiler!r} here: the C rows are left out")
        return None
    binary = directory / source.stem
    subprocess.run([compiler, *C_FLAGS, "-o", str(binary), str(source)], check=True)
    return binary


def c_lanes(binary: Path, streams: int) -> Run:
    """The C lane reference over ``streams`` streams from 0 (``run(points a stream)``)."""

    def run(points: int) -> tuple[float, int]:
        done = subprocess.run(
            [str(binary), str(SEED), "0", str(streams), str(points)], capture_output=True, text=True, check=True
        )
        inside, seconds = done.stdout.split()
        return float(seconds), int(inside)

    return run


def clock_ghz(binary: Path | None) -> float | None:
    """The core's cycles per CPU second (GHz), median of 3; None where unmeasured."""
    if binary is None:
        return None
    readings = [
        float(subprocess.run([str(binary), "clock"], capture_output=True, text=True, check=True).stdout)
        for _ in range(3)
    ]
    return statistics.median(readings) or None


def interleaved(rows: dict[str, tuple[Run, int]], repeat: int) -> tuple[dict[str, float], dict[str, set[int]]]:
    """Each row run once per round, the order rotating; the median CPU seconds of each row
    and the counts it gave."""
    for run, points in rows.values():
        run(min(points, 100_000))  # warm caches and lazy imports
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    counts: dict[str, set[int]] = {name: set() for name in rows}
    names = list(rows)
    for round_number in range(repeat):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            run, points = rows[name]
            elapsed, inside = run(points)
            seconds[name].append(elapsed)
            counts[name].add(inside)
    return {name: statistics.median(values) for name, values in seconds.items()}, counts


def per_cycle(rate: float, ghz: float | None) -> str:
    return f"{rate / (ghz * 1e9):6.2f}" if ghz else f"{'-':>6}"


def ranges(compiler: str, repeat: int, ghz_binary: Path | None) -> None:
    """The range rows: the lane kernel beside the C lane reference, and the ratio."""
    from mcpi_worker.kernels import fused_range, lanes

    with tempfile.TemporaryDirectory() as build:
        binary = compile_reference(compiler, Path(build), LANES_SOURCE)
        rows: dict[str, tuple[Run, int]] = {}
        for streams, points in RANGES:
            label = f"{streams} x {points:.0e}"
            rows[f"lanes, {label}"] = (timed(lambda n, s=streams: sum(lanes.count_streams(SEED, 0, s, n))), points)
            if binary is not None:
                rows[f"C lanes, {label}"] = (c_lanes(binary, streams), points)
            rows[f"fused_range, {label}"] = (
                timed(lambda n, s=streams: sum(fused_range.count_streams(SEED, 0, s, n))),
                points,
            )
        ghz = clock_ghz(ghz_binary)
        print(f"\nranges, seeding included; {repeat} interleaved rounds; load average {load()}")
        median, counts = interleaved(rows, repeat)
    streams_of = {f"{streams} x {points:.0e}": streams for streams, points in RANGES}
    print(f"{'':30} {'G points/s':>10} {'pts/cycle':>9} {'x C lanes':>9} {'agree':>6}")
    for name, (_, points) in rows.items():
        label = name.split(", ", 1)[1]
        rate = streams_of[label] * points / median[name]
        reference = f"C lanes, {label}"
        versus = (
            f"{median[reference] / median[name]:9.2f}" if reference in median else f"{'-':>9}"
        )
        agree = len({c for row, values in counts.items() if row.endswith(label) for c in values}) == 1
        print(f"{name:30} {rate / 1e9:10.2f} {per_cycle(rate, ghz)}    {versus} {agree!s:>6}")
    if binary is not None:
        for streams, points in RANGES:
            label = f"{streams} x {points:.0e}"
            ratio = median[f"C lanes, {label}"] / median[f"lanes, {label}"]
            print(f"lanes / C lanes at {label}: {ratio:.2f}x  (target >= 0.7)")
    print(f"load average after: {load()}"
          + (f"; clock {ghz:.2f} GHz (dependent adds, CPU time)" if ghz else ""))


def c_loop(binary: Path, variant: str) -> Run:
    a, b, c, counter = (
        str(int(word)) for word in sfc64_state(np.random.SFC64(stream_seed_sequence(SEED, 0)))
    )

    def run(points: int) -> tuple[float, int]:
        done = subprocess.run(
            [str(binary), variant, a, b, c, counter, str(points)],
            capture_output=True,
            text=True,
            check=True,
        )
        inside, seconds = done.stdout.split()
        return float(seconds), int(inside)

    return run


def count(text: str) -> int:
    return int(float(text.replace("_", "")))


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------ start-up


def worker_command() -> list[str]:
    script = Path(sys.executable).with_name("mcpi-worker")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mcpi_worker"]


@dataclass(frozen=True)
class StartUp:
    first_result_s: float
    """From starting the process to the result of its first sample (1e6 points)."""
    exit_s: float
    """From starting it to its exit after end of input (a load in progress is awaited)."""
    load_s: float | None
    """What the worker logged the fused load took (None: no load)."""
    compiled: bool | None


def start_worker_once(environ: dict[str, str]) -> StartUp:
    started = time.perf_counter()
    worker = BlockingWorker(
        worker_command(), "bench", PROTOCOL_VERSIONS, subprocess.PIPE,
        then=[Sample(id=1, seed=SEED, stream=0, points=1_000_000, kernel="numpy")], env=environ,
    )  # fmt: skip
    while not isinstance(worker.receive(), Result):
        pass
    first_result_s = time.perf_counter() - started
    process = worker.process
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    process.stdin.close()
    process.wait(timeout=120)
    exit_s = time.perf_counter() - started
    logs = [json.loads(line) for line in process.stderr.read().splitlines() if line.startswith(b"{")]
    process.stdout.close()
    process.stderr.close()
    loaded = [entry for entry in logs if entry.get("event") == "numpy_kernel_implementation"]
    if not loaded:
        return StartUp(first_result_s, exit_s, None, None)
    return StartUp(first_result_s, exit_s, loaded[0]["load_s"], loaded[0]["compiled"])


def startup(rounds: int) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MCPI_", "NUMBA_"))}
    # A worker whose cache lacks a file starts the warming process (numba_marker.start_warming)
    # in a session of its own, writing into these directories; it may still be writing
    # when the rounds end, and removing a directory it fills raced it ("Directory not
    # empty"). What it leaves behind is the operating system's temporary files to clean.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as scratch:
        warm_dir = str(Path(scratch) / "warm")
        start_worker_once({**base, "MCPI_NUMPY_IMPL": "fused", "NUMBA_CACHE_DIR": warm_dir})  # fill it
        cases: dict[str, Callable[[int], dict[str, str]]] = {
            "numpy (MCPI_NUMPY_IMPL=numpy)": lambda _: {**base, "MCPI_NUMPY_IMPL": "numpy"},
            "auto (the default)": lambda _: {**base, "NUMBA_CACHE_DIR": warm_dir},
            "fused, warm cache": lambda _: {**base, "MCPI_NUMPY_IMPL": "fused", "NUMBA_CACHE_DIR": warm_dir},
            "fused, empty cache (compiles)": lambda r: {
                **base,
                "MCPI_NUMPY_IMPL": "fused",
                "NUMBA_CACHE_DIR": str(Path(scratch) / f"cold{r}"),
            },
        }
        runs: dict[str, list[StartUp]] = {name: [] for name in cases}
        for r in range(rounds):
            for name, environ in cases.items():
                runs[name].append(start_worker_once(environ(r)))
    print(f"\nworker start-up, median of {rounds}; load average {load()}")
    print(f"  {'':32} {'first result':>12} {'exit':>8} {'fused load':>11} (in the background)")
    for name, values in runs.items():
        first = statistics.median(v.first_result_s for v in values)
        gone = statistics.median(v.exit_s for v in values)
        loads = [v.load_s for v in values if v.load_s is not None]
        load_text = f"{statistics.median(loads):10.3f}s" if loads else f"{'-':>11}"
        compiled = {v.compiled for v in values if v.compiled is not None}
        note = {frozenset({True}): " compiled", frozenset({False}): " from the cache"}.get(
            frozenset(compiled), ""
        )
        print(f"  {name:32} {first:11.3f}s {gone:7.3f}s {load_text}{note}")


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--numpy-points", type=count, default=50_000_000)
    parser.add_argument("--python-points", type=count, default=1_000_000)
    parser.add_argument("--cc", default="gcc", help="C compiler for the reference rows (gcc)")
    parser.add_argument("--startup-rounds", type=int, default=5)
    parser.add_argument("--no-ranges", action="store_true", help="leave out the range rows")
    args = parser.parse_args()
    count_numpy(SEED, 0, 1, implementation=Implementation.NUMBA_FUSED)
    fused = NUMPY_KERNEL.status().fused
    assert fused is not None

    with tempfile.TemporaryDirectory() as build:
        binary = compile_reference(args.cc, Path(build))
        clock_binary = compile_reference(args.cc, Path(build), LANES_SOURCE)
        ghz = clock_ghz(clock_binary)
        fast, slow = args.numpy_points, args.python_points
        rows: dict[str, tuple[Run, int]] = {
            "numba-fused (numpy kernel)": (
                timed(lambda n: count_numpy(SEED, 0, n, implementation=Implementation.NUMBA_FUSED)),
                fast,
            ),
            "numpy (numpy kernel, fallback)": (
                timed(lambda n: count_numpy(SEED, 0, n, implementation=Implementation.NUMPY)),
                fast,
            ),
        }
        if binary is not None:
            rows["C, one loop"] = (c_loop(binary, "one"), fast)
            rows["C, two passes"] = (c_loop(binary, "two-pass"), fast)
        rows |= {
            "numpy, Generator.random(float32)": (timed(numpy_generator_float32), fast),
            "numpy, np.random.random float64": (timed(numpy_random_float64), fast),
            "python kernel (mcpi)": (timed(lambda n: count_python(SEED, 0, n)), slow),
            "lesson loop (random.random)": (timed(lesson_loop), slow),
        }
        print(f"load average before: {load()}")
        how = "compiled" if fused.compiled else "loaded from the cache"
        print(f"numba-fused {how} in {fused.load_s:.3f} s (before timing)")
        print(f"one stream: {args.repeat} interleaved rounds; median points per CPU second on one core")
        median, counts = interleaved(rows, args.repeat)

        rate = {name: rows[name][1] / seconds for name, seconds in median.items()}
        reference = rate.get("C, two passes")
        numpy_rate = rate["numpy (numpy kernel, fallback)"]
        lesson = rate["lesson loop (random.random)"]
        print(f"\n{'':34} {'M points/s':>11} {'pts/cycle':>9} {'x C 2-pass':>10} {'x numpy':>8} {'x lesson':>9}")
        for name in rows:
            versus_c = f"{rate[name] / reference:10.2f}" if reference else f"{'-':>10}"
            print(
                f"{name:34} {rate[name] / 1e6:11.1f}    {per_cycle(rate[name], ghz)} {versus_c} "
                f"{rate[name] / numpy_rate:8.2f} {rate[name] / lesson:9.1f}"
            )
        same_points = [name for name in rows if not name.startswith(("numpy, np.random", "python", "lesson"))]
        agreed = {next(iter(counts[name])) for name in same_points if len(counts[name]) == 1}
        print(f"counts of the rows drawing the same points agree: {len(agreed) == 1} ({sorted(agreed)})")
        single = rate["numba-fused (numpy kernel)"]
        if reference:
            print(f"numba-fused / C one loop:   {single / rate['C, one loop']:.2f}x")
            print(f"numba-fused / C two passes: {single / reference:.2f}x  (target >= 1.0)")
        print(f"numba-fused / numpy:        {single / numpy_rate:.2f}x")
        print(f"load average after: {load()}" + (f"; clock {ghz:.2f} GHz" if ghz else ""))
        if not args.no_ranges:
            ranges(args.cc, args.repeat, clock_binary)
    if args.startup_rounds > 0:
        startup(args.startup_rounds)


if __name__ == "__main__":
    main()
