"""The reference a competent user writes without mcpi: ProcessPoolExecutor + NumPy.

    python benchmarks/executor_numpy.py POINTS [--workers 2] [--chunk-size 1e7] [--seed 1]

Each chunk is one independently seeded stream (``SeedSequence(seed, spawn_key=(chunk,))``,
NumPy's default generator) of float32 points drawn in blocks of 1e6 (memory flat), tested
``x*x + y*y < 1``; the chunks are mapped over ``--workers`` processes and the counts
summed. Prints ``INSIDE POINTS PI``. benchmarks/scaling.py runs it as a whole cold
command beside ``mcpi estimate``.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor

import numpy as np

BLOCK = 1_000_000


def count_chunk(seed: int, chunk: int, points: int) -> int:
    generator = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(chunk,)))
    inside = 0
    for start in range(0, points, BLOCK):
        xy = generator.random((min(BLOCK, points - start), 2), dtype=np.float32)
        np.square(xy, out=xy)
        inside += int(np.count_nonzero(xy[:, 0] + xy[:, 1] < np.float32(1)))
    return inside


def number(text: str) -> int:
    return int(float(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("points", type=number)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=number, default=10_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = [min(args.chunk_size, args.points - start) for start in range(0, args.points, args.chunk_size)]
    with ProcessPoolExecutor(args.workers) as executor:
        inside = sum(executor.map(count_chunk, [args.seed] * len(sizes), range(len(sizes)), sizes))
    print(inside, args.points, 4 * inside / args.points)


if __name__ == "__main__":
    main()
