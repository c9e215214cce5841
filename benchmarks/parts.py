"""One run on one coordinator against the same run split into K parts on K coordinators
(``mcpi estimate --part I/K``, run at once, as K allocations would) and ``mcpi combine``.

Each round runs the single ``mcpi estimate --workers W`` and then the K parts at the
same time, each ``--workers W/K`` (the same cores in all), then combines them; the
rounds alternate which goes first. Printed: the medians of the wall times (whole
commands, start-up included), their ratio, the combine's own time, the load average,
and whether the combined count is bit-identical to the single run's (it must be).

    python benchmarks/parts.py [--points 2e9] [--parts 2] [--workers 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mcpi_coordinator.arguments import count

SEED = 20261202
MCPI = [sys.executable, "-m", "mcpi_coordinator"]


def _timed(commands: list[list[str]]) -> tuple[float, list[str]]:
    """Run ``commands`` at once; (seconds until the last ended, their stdouts)."""
    started = time.perf_counter()
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True) for c in commands]
    outputs = [process.communicate()[0] for process in processes]
    elapsed = time.perf_counter() - started
    for process in processes:
        if process.returncode != 0:
            raise SystemExit(f"a run failed (exit {process.returncode})")
    return elapsed, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=count, default=2 * 10**9)
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="in all: each part gets workers/parts")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run = ["estimate", "--json", "-q", "--points", str(args.points), "--seed", str(SEED)]
    each = max(1, args.workers // args.parts)
    single_s: list[float] = []
    parts_s: list[float] = []
    combine_s: list[float] = []
    identical = True
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            order = ["single", "parts"] if round_ % 2 == 0 else ["parts", "single"]
            single: dict[str, Any] = {}
            for which in order:
                if which == "single":
                    elapsed, (out,) = _timed([[*MCPI, *run, "--workers", str(args.workers)]])
                    single_s.append(elapsed)
                    single = json.loads(out)
                    continue
                commands = [
                    [*MCPI, *run, "--workers", str(each), "--part", f"{i}/{args.parts}"]
                    for i in range(1, args.parts + 1)
                ]
                elapsed, outs = _timed(commands)
                parts_s.append(elapsed)
                files = []
                for i, out in enumerate(outs, 1):
                    files.append(Path(folder) / f"part{i}.json")
                    files[-1].write_text(out, encoding="utf-8")
            elapsed, (out,) = _timed([[*MCPI, "combine", "--json", *map(str, files)]])
            combine_s.append(elapsed)
            combined = json.loads(out)
            identical &= (combined["inside"], combined["points"], combined["pi"]) == (
                single["inside"], single["points"], single["pi"],
            )  # fmt: skip
            print(
                f"round {round_ + 1}: single {single_s[-1]:.2f} s, {args.parts} parts {parts_s[-1]:.2f} s, "
                f"combine {combine_s[-1]:.2f} s, inside {single['inside']} vs {combined['inside']}",
                flush=True,
            )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    single_median, parts_median = statistics.median(single_s), statistics.median(parts_s)
    print(
        f"{args.points:,} points, {args.workers} workers in all: one coordinator {single_median:.2f} s, "
        f"{args.parts} coordinators x {each} workers {parts_median:.2f} s (ratio {parts_median / single_median:.2f}), "
        f"mcpi combine {statistics.median(combine_s):.2f} s; medians of {args.rounds}; "
        f"bit-identical: {identical}; load average {load}"
    )


if __name__ == "__main__":
    main()
