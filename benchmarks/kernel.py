"""Points per second on one core: our kernels beside the references, in the same run.

    python benchmarks/kernel.py [--repeat 7] [--numpy-points 20e6] [--python-points 1e6]

Rows:
- ``numpy kernel``: mcpi's default kernel (SFC64, float32, in-place blocks).
- ``numpy, Generator.random(float32)``: the same points drawn the obvious way, to
  show what the raw-bits fast path buys.
- ``numpy, np.random.random float64``: the plain NumPy reference (legacy global
  generator, float64, chunked like ours so memory stays flat).
- ``python kernel``: mcpi's pure-Python kernel (seeded ``random.Random``).
- ``lesson loop``: the lesson's ``random.random()`` x/y loop, verbatim.

Each row is timed ``--repeat`` times; the median is reported, with the ratio to the
lesson loop and to the plain NumPy reference. The machine may be shared: the load
average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable

import numpy as np

from mcpi_worker.kernels import BLOCK_POINTS, count_numpy, count_python, stream_seed_sequence

SEED = 20240601


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


def median_rate(run: Callable[[int], int], points: int, repeat: int) -> tuple[float, float]:
    """Median and spread (max/min) of points per second over ``repeat`` timed runs."""
    run(min(points, 100_000))  # warm up caches and lazy imports
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        run(points)
        rates.append(points / (time.perf_counter() - started))
    return statistics.median(rates), max(rates) / min(rates)


def count(text: str) -> int:
    return int(float(text.replace("_", "")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--numpy-points", type=count, default=20_000_000)
    parser.add_argument("--python-points", type=count, default=1_000_000)
    args = parser.parse_args()

    rows: list[tuple[str, Callable[[int], int], int]] = [
        ("numpy kernel (mcpi default)", lambda n: count_numpy(SEED, 0, n), args.numpy_points),
        ("numpy, Generator.random(float32)", numpy_generator_float32, args.numpy_points),
        ("numpy, np.random.random float64", numpy_random_float64, args.numpy_points),
        ("python kernel (mcpi)", lambda n: count_python(SEED, 0, n), args.python_points),
        ("lesson loop (random.random)", lesson_loop, args.python_points),
    ]
    print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.repeat} repetitions each; median points/s on one core\n")
    rates = {}
    spreads = {}
    for name, run, points in rows:
        rates[name], spreads[name] = median_rate(run, points, args.repeat)
    lesson = rates["lesson loop (random.random)"]
    reference = rates["numpy, np.random.random float64"]
    print(f"{'':34} {'M points/s':>11} {'max/min':>8} {'x lesson':>9} {'x np float64':>13}")
    for name, _, _ in rows:
        print(
            f"{name:34} {rates[name] / 1e6:11.1f} {spreads[name]:8.2f} "
            f"{rates[name] / lesson:9.1f} {rates[name] / reference:13.2f}"
        )
    print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
