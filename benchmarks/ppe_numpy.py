"""The plain way to count points on a few processes: ProcessPoolExecutor + NumPy.

The reference a whole ``mcpi estimate`` command is held against (benchmarks/tiny.py):
what a Python user would write instead, as one script run from a cold start. It counts
the very points mcpi counts (the numpy kernel: SFC64 seeded with
``SeedSequence(seed, spawn_key=(chunk,))``, float32 coordinates, ``x*x + y*y < 1`` in
float32), chunk by chunk on ``--workers`` processes, and prints the count, so that the
benchmark can check both counted the same thing. It imports nothing from mcpi.

    python benchmarks/ppe_numpy.py --points 1000 --seed 1 [--chunk-size 10000000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np

BLOCK = 1 << 16


def count(seed: int, chunk: int, points: int) -> int:
    generator = np.random.Generator(np.random.SFC64(np.random.SeedSequence(seed, spawn_key=(chunk,))))
    inside = 0
    while points > 0:
        n = min(BLOCK, points)
        xy = generator.random(2 * n, dtype=np.float32)
        x, y = xy[0::2], xy[1::2]
        inside += int(np.count_nonzero(x * x + y * y < np.float32(1.0)))
        points -= n
    return inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sizes = [min(args.chunk_size, args.points - start) for start in range(0, args.points, args.chunk_size)]
    with ProcessPoolExecutor(max_workers=args.workers) as executor:
        inside = sum(executor.map(count, [args.seed] * len(sizes), range(len(sizes)), sizes))
    print(json.dumps({"inside": inside, "points": args.points, "pi": 4 * inside / args.points}))


if __name__ == "__main__":
    main()
