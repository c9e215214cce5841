"""Issue 12's speed targets for ranges and multi-core workers, measured side by side.

    python benchmarks/ranges.py [--points 1e9] [--rounds 5] [--kernel numpy]

Each contender is a started pool of real ``mcpi-worker`` processes (warm: the pool is up
and has counted 6e8 points, so the fused kernel is loaded); only ``run_estimate`` is timed.
Contenders run once a round, in rotating order, and the medians are compared:

1. **Chunk size does not matter**: ``--points`` at ``--chunk-size 1e4`` against
   ``--chunk-size 1e7`` on 2 workers (target: within 1.2x; per-request overhead made
   it 5.2x before stream ranges).
2. **One multi-core worker is as good as many**: 1 worker running ``mcpi-worker
   --jobs 2`` against 2 workers (target: within 1.1x).

Every contender must give the same count as the others for the same chunk size (the
run is checked, not only timed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scaling import load, run_rounds

from mcpi_coordinator.arguments import count
from mcpi_coordinator.cli.logging import configure_logging
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.run.estimate import run_estimate

SEED = 20261202
WORKER = [sys.executable, "-m", "mcpi_worker"]


class WarmPool:
    """One contender: how to start its pool and what run to time on it."""

    def __init__(self, size: int, argv: list[str], points: int, chunk_size: int, kernel: str) -> None:
        self.size, self.argv, self.points, self.chunk_size, self.kernel = size, argv, points, chunk_size, kernel

    async def _rounds(self, rounds: int, report: Callable[[float, int], None]) -> None:
        async with WorkerPool(self.size, command=self.argv) as pool:
            # Warm-up: under MCPI_NUMPY_IMPL=auto a worker counts its first 2e8 points with
            # NumPy while the fused loop loads (slow per stream at chunk 1e4); time the
            # steady state.
            await run_estimate(pool, points=6 * 10**8, seed=SEED + 1, chunk_size=10**7, kernel=self.kernel)
            for _ in range(rounds):
                started = time.perf_counter()
                result = await run_estimate(
                    pool, points=self.points, seed=SEED, chunk_size=self.chunk_size, kernel=self.kernel
                )
                report(time.perf_counter() - started, result.inside)


def one_run(pool: WarmPool) -> Callable[[], tuple[float, int]]:
    """A contender for ``run_rounds``: each call starts the pool, warms it with a small
    run, and times one run (start-up and warm-up not timed)."""

    def run() -> tuple[float, int]:
        out: list[tuple[float, int]] = []
        trio.run(pool._rounds, 1, lambda seconds, inside: out.append((seconds, inside)))
        return out[0]

    return run


def compare(title: str, contenders: dict[str, WarmPool], rounds: int, target: float) -> None:
    print(f"\n{title}")
    times, counts = run_rounds({name: one_run(pool) for name, pool in contenders.items()}, rounds)
    (fast, slow) = contenders
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    for name, median in medians.items():
        print(f"  {name:<34} median {median:6.3f} s  counts {sorted(counts[name])}")
    ratio = medians[slow] / medians[fast]
    verdict = "met" if ratio <= target else "NOT met"
    print(f"  ratio {slow} / {fast} = {ratio:.3f} (target <= {target}: {verdict}); {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=count, default=10**9)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kernel", default="numpy")
    args = parser.parse_args()
    configure_logging("warning", "console")
    print(f"{args.points:.0e} points, kernel {args.kernel}, {args.rounds} rounds; {load()}")
    compare(
        "1. chunk size 1e4 against 1e7, 2 workers",
        {
            "--chunk-size 1e7": WarmPool(2, WORKER, args.points, 10**7, args.kernel),
            "--chunk-size 1e4": WarmPool(2, WORKER, args.points, 10**4, args.kernel),
        },
        args.rounds,
        1.2,
    )
    compare(
        "2. one worker with --jobs 2 against two workers, chunk 1e7",
        {
            "--workers 2": WarmPool(2, WORKER, args.points, 10**7, args.kernel),
            "--workers 1 (mcpi-worker --jobs 2)": WarmPool(
                1, [*WORKER, "--jobs", "2"], args.points, 10**7, args.kernel
            ),
        },
        args.rounds,
        1.1,
    )


if __name__ == "__main__":
    main()
