"""What a range of long streams costs by how many streams it has: the lanes' padding.

``lanes.count_streams`` over ``n`` streams of ``--points`` points each (the long-stream
path: groups of lanes, a vector of 8, single streams; ``lanes.long_groups``), process CPU
time, the median of ``--rounds`` interleaved rounds: the cost of one step of all ``n``
streams, and points per second.

    python benchmarks/lane_widths.py [--points 4e6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from mcpi_coordinator.arguments import count
from mcpi_worker.kernels import lanes

STREAM_COUNTS = (1, 2, 3, 4, 5, 8, 9, 12, 16, 17, 18, 24, 32, 33, 48, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=count, default=4_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"lanes.count_streams, {args.points:.0e} points a stream, {args.rounds} rounds; load average {load}")
    seconds: dict[int, list[float]] = {n: [] for n in STREAM_COUNTS}
    for _ in range(args.rounds):
        for n in STREAM_COUNTS:
            started = time.process_time()
            lanes.count_streams(5, 1000, n, args.points)
            seconds[n].append(time.process_time() - started)
    for n in STREAM_COUNTS:
        median = statistics.median(seconds[n])
        print(
            f"  {n:3} streams {lanes.long_groups(n)!s:18} {median * 1e3:7.1f} ms  "
            f"{n * args.points / median / 1e9:5.2f} G points/s  a step of all: {median / args.points * 1e9:6.2f} ns"
        )


if __name__ == "__main__":
    main()
