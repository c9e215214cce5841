"""How far apart two workers end a range: the real ``Dispatcher`` on a simulated clock,
each piece costed as this machine's lane kernel counts it.

    python benchmarks/tail_balance.py [--rounds 5] [--costs 1:6.0,8:22.6,16:30.6,32:56.7,48:84.0,64:112.4]

First the CPU time of one piece of 1e7-point streams is measured here, with the loaded
fused kernel (``choice.load_fused``, warm), for each way a worker counts a group of a
range (``drive.long_groups``): a stream alone (the single-stream loop), a vector of 8
lanes, and padded groups of 16, 32, 48 and 64 lanes (medians of ``--rounds``). A piece
of n streams then costs the sum over its groups (``--costs`` gives them instead, in ms, to
compare two trees' dispatchers under the same costs: run the script with each tree's
interpreter). Then a range of 996 to 1008 streams
(1e10 points at the default chunk size is 1000) goes through the dispatcher to two lane
workers (depth 2, one job each, as ``mcpi estimate --workers 2`` has them) that become
ready 0 to 50 ms apart (``tests/pool/test_dispatch.py``'s ``run_range_on_lane_workers``:
the same simulation its tests hold properties of), and the script prints when each one
ends, how long one counted alone at the end, and an even split of all the work. The same
range also goes to one lane worker alone, and for both the script adds up the CPU of every
piece as costed (the first pieces, before a worker's speed is known, and the last ones
included) against the same streams all in full lanes: what the pieces the dispatcher chose
cost beyond the kernel's best, with one worker and with two. All of it twice: for workers
whose answers alone say they count in lanes (their first pieces are one stream each, which
a lane worker counts in its single-stream loop) and for workers whose welcomes say so, as
the ones ``mcpi estimate`` starts early do once their load has begun (first pieces of whole
lane groups: ``pool.dispatch.LANE_FIRST_PIECE_POINTS``). No process or pipe is simulated:
what this shows is the dispatcher's choice of pieces.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "pool")]

from test_dispatch import run_range_on_lane_workers  # noqa: E402

from mcpi_worker.kernels.choice import load_fused  # noqa: E402
from mcpi_worker.kernels.drive import long_groups  # noqa: E402

STREAM_POINTS = 10_000_000
SEED = 20240611
WIDTHS = (1, 8, 16, 32, 48, 64)
"""Groups measured: one stream alone, one vector of 8 lanes (4 to 8 streams), padded groups."""
STREAMS = (996, 1000, 1004, 1008)
OFFSETS_S = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05)


def group_costs(rounds: int) -> dict[int, float]:
    """CPU seconds of one group of each width in ``WIDTHS`` (1e7-point streams)."""
    loaded = load_fused()
    loaded.count_streams(SEED, 10**9, 64, 100_000, lambda: False)  # warm
    seconds: dict[int, list[float]] = {width: [] for width in WIDTHS}
    for round_number in range(rounds):
        for width in WIDTHS:
            started = time.process_time()
            loaded.count_streams(SEED, 1000 * round_number, width, STREAM_POINTS, lambda: False)
            seconds[width].append(time.process_time() - started)
    return {width: statistics.median(values) for width, values in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--costs", help="WIDTH:MS,... for every width of WIDTHS, instead of measuring them")
    args = parser.parse_args()
    if args.costs:
        costs = {int(w): float(ms) / 1e3 for w, ms in (pair.split(":") for pair in args.costs.split(","))}
        if set(costs) != set(WIDTHS):
            parser.error(f"--costs needs the widths {', '.join(map(str, WIDTHS))}")
    else:
        costs = group_costs(args.rounds)
    shown = ", ".join(f"{width} {seconds * 1e3:.1f}" for width, seconds in costs.items())
    print(f"one group of 1e7-point streams, ms of CPU by its lanes: {shown}")

    def cost(streams: int) -> float:
        total = 0.0
        for group in long_groups(streams):
            width = 1 if group == 1 else 8 if group <= 8 else -(-group // 16) * 16
            total += costs[width]
        return total

    lane_s = costs[64] / 64
    for welcome_lanes in (False, True):
        said = "welcomes say" if welcome_lanes else "answers alone say"
        print(f"workers whose {said} they count in lanes:")
        simulate(cost, lane_s, welcome_lanes=welcome_lanes)


def simulate(cost: Callable[[int], float], lane_s: float, *, welcome_lanes: bool) -> None:
    """Each range of ``STREAMS`` on one worker, then on two ready ``OFFSETS_S`` apart."""
    differences, late = [], []
    extra: dict[int, list[float]] = {1: [], 2: []}
    for streams in STREAMS:
        alone = run_range_on_lane_workers(1, streams, [0.0], cost, welcome_lanes=welcome_lanes)
        extra[1].append(sum(end - begin for _, begin, end, _ in alone) - streams * lane_s)
        print(
            f"  {streams} streams, one worker: ends {max(end for _, _, end, _ in alone) * 1e3:6.1f} ms, "
            f"CPU {extra[1][-1] * 1e3:5.1f} ms beyond all in full lanes ({streams * lane_s * 1e3:6.1f} ms); "
            f"pieces {', '.join(str(chunk.streams) for *_, chunk in alone)}"
        )
        for offset in OFFSETS_S:
            pieces = run_range_on_lane_workers(2, streams, [0.0, offset], cost, welcome_lanes=welcome_lanes)
            extra[2].append(sum(end - begin for _, begin, end, _ in pieces) - streams * lane_s)
            ends = [max(end for slot, _, end, _ in pieces if slot == worker) for worker in (0, 1)]
            even = (streams * lane_s + offset) / 2
            differences.append(abs(ends[0] - ends[1]))
            late.append(max(ends) - even)
            print(
                f"  {streams} streams, second worker {offset * 1e3:2.0f} ms later: ends {ends[0] * 1e3:6.1f} and "
                f"{ends[1] * 1e3:6.1f} ms, one alone for {abs(ends[0] - ends[1]) * 1e3:4.1f} ms; "
                f"all in full lanes, split evenly: {even * 1e3:6.1f} ms; CPU {extra[2][-1] * 1e3:5.1f} ms beyond it"
            )
    print(f"one worker alone at the end: median {statistics.median(differences) * 1e3:.1f} ms, "
          f"most {max(differences) * 1e3:.1f} ms; the last end after the even split in full lanes: "
          f"median {statistics.median(late) * 1e3:.1f} ms, most {max(late) * 1e3:.1f} ms")  # fmt: skip
    print(f"CPU of the pieces beyond all in full lanes: one worker median {statistics.median(extra[1]) * 1e3:.1f} ms, "
          f"two workers median {statistics.median(extra[2]) * 1e3:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
