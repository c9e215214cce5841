"""What the command line itself costs: a usage error, a TAB completion, and the progress
line against none on a real run, all as whole ``mcpi`` processes.

    python benchmarks/cli.py [--rounds 5] [--points 1e9] [--workers 2]

Prints medians over the rounds and the ratio of the run with the progress line to the
run without; the load average is printed with every figure (the machine is shared).
The progress run has its stderr on a pseudo-terminal, as a person's would be, so the
line is really drawn; the other run gets the same terminal and ``--no-progress``.
"""

from __future__ import annotations

import argparse
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

MCPI = [sys.executable, "-m", "mcpi_coordinator"]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (1 min), {five:.2f} (5 min)"


def timed(run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def usage_error() -> None:
    argv = [*MCPI, "estimate", "--points", "1e30"]
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr


def completion() -> None:
    with tempfile.NamedTemporaryFile() as out:
        line = "mcpi estimate --poi"
        env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
               "_ARGCOMPLETE_STDOUT_FILENAME": out.name}  # fmt: skip
        subprocess.run(MCPI, env=env, capture_output=True, timeout=60, check=False)
        assert b"--points" in out.read()


def estimate_on_a_terminal(extra: Sequence[str], points: str, workers: int) -> Callable[[], None]:
    def run() -> None:
        leader, follower = pty.openpty()
        process = subprocess.Popen(
            [*MCPI, "estimate", "-n", points, "-w", str(workers), "-s", "1", "--json", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
        )  # fmt: skip
        os.close(follower)
        while True:  # drain the terminal, as a terminal emulator would
            try:
                if not os.read(leader, 65536):
                    break
            except OSError:
                break
        assert process.wait(timeout=600) == 0
        os.close(leader)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--points", default="1e9")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    for name, run in (("usage error (mcpi estimate --points 1e30)", usage_error),
                      ("TAB completion (mcpi estimate --poi)", completion)):  # fmt: skip
        times = [timed(run) for _ in range(args.rounds * 2)]
        print(f"{name}: median {statistics.median(times) * 1000:.0f} ms over {len(times)}; {load()}")

    with_bar, without = [], []
    for round_number in range(args.rounds):
        # Alternate the order, so neither always runs on a warmer machine.
        pair = [("bar", []), ("none", ["--no-progress"])]
        for kind, extra in pair if round_number % 2 == 0 else pair[::-1]:
            took = timed(estimate_on_a_terminal(extra, args.points, args.workers))
            (with_bar if kind == "bar" else without).append(took)
    bar, none = statistics.median(with_bar), statistics.median(without)
    print(
        f"mcpi estimate -n {args.points} -w {args.workers} on a terminal: with the progress line "
        f"{bar:.3f} s, --no-progress {none:.3f} s (medians of {args.rounds}); "
        f"ratio {bar / none:.3f}; {load()}"
    )


if __name__ == "__main__":
    main()
