"""What the command line itself costs, as whole ``mcpi`` processes from a cold start.

    python benchmarks/cli.py [--rounds 21]                 # start-up, against python3 -c pass
    python benchmarks/cli.py --progress [--points 1e9]     # the progress line against none

Start-up (issue 20): ``mcpi --help``, ``mcpi --version``, a usage error and a TAB
completion request, each run in turn with ``python3 -c pass`` (this interpreter, so
the same site-packages start-up) in every round, in a rotated order so none always runs
on a warmer machine. Prints each one's median and its ratio to the reference's median
of the same run (the target: at most 5), and the load average (the machine is shared).

``--progress``: ``mcpi estimate`` with its stderr on a pseudo-terminal, as a person's
would be, so the line is really drawn, against the same run with ``--no-progress``.
"""

from __future__ import annotations

import argparse
import os
import pty
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_SCRIPT = Path(sys.executable).with_name("mcpi")
MCPI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "mcpi_coordinator"]
"""The installed console script, as a user runs it (``python -m`` from a source tree)."""


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f} (1 min), {five:.2f} (5 min)"


def timed(run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


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


def cost(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Run ``argv`` to its end: (wall seconds, CPU seconds of user + system, exit status).
    The CPU time is the child's own (``wait4``): on a busy machine the wall time mostly
    measures the wait for a core, the CPU time what the command itself costs."""
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime, process.returncode


def start_up(rounds: int) -> None:
    line = "mcpi estimate --poi"
    completing = {"_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
                  "_ARGCOMPLETE_STDOUT_FILENAME": os.devnull}  # fmt: skip
    contenders: list[tuple[str, list[str], dict[str, str] | None, int]] = [
        ("python3 -c pass", [sys.executable, "-c", "pass"], None, 0),
        ("mcpi --help", [*MCPI, "--help"], None, 0),
        ("mcpi --version", [*MCPI, "--version"], None, 0),
        ("usage error (mcpi estimate --points 1e30)", [*MCPI, "estimate", "--points", "1e30"], None, 2),
        ("TAB completion (mcpi estimate --poi)", MCPI, completing, 0),
    ]
    walls: dict[str, list[float]] = {name: [] for name, *_ in contenders}
    cpus: dict[str, list[float]] = {name: [] for name, *_ in contenders}
    for round_number in range(rounds):
        shift = round_number % len(contenders)
        for name, argv, env, code in contenders[shift:] + contenders[:shift]:
            wall, cpu, status = cost(argv, env)
            assert status == code, (name, status)
            walls[name].append(wall)
            cpus[name].append(cpu)
    wall_base, cpu_base = statistics.median(walls["python3 -c pass"]), statistics.median(cpus["python3 -c pass"])
    print(f"start-up, medians of {rounds} rounds (wall, and CPU = user + system of the process); {load()}")
    for name, taken in walls.items():
        wall, cpu = statistics.median(taken), statistics.median(cpus[name])
        print(f"  {name:45s} wall {wall * 1000:7.1f} ms {wall / wall_base:5.2f}x   "
              f"CPU {cpu * 1000:6.1f} ms {cpu / cpu_base:5.2f}x   (x python3 -c pass)")  # fmt: skip


def progress_line(rounds: int, points: str, workers: int) -> None:
    with_bar, without = [], []
    for round_number in range(rounds):
        # Alternate the order, so neither always runs on a warmer machine.
        pair = [("bar", []), ("none", ["--no-progress"])]
        for kind, extra in pair if round_number % 2 == 0 else pair[::-1]:
            took = timed(estimate_on_a_terminal(extra, points, workers))
            (with_bar if kind == "bar" else without).append(took)
    bar, none = statistics.median(with_bar), statistics.median(without)
    print(
        f"mcpi estimate -n {points} -w {workers} on a terminal: with the progress line "
        f"{bar:.3f} s, --no-progress {none:.3f} s (medians of {rounds}); "
        f"ratio {bar / none:.3f}; {load()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=None, help="default 21 (start-up), 5 (--progress)")
    parser.add_argument("--progress", action="store_true", help="time the progress line instead")
    parser.add_argument("--points", default="1e9")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.progress:
        progress_line(args.rounds or 5, args.points, args.workers)
    else:
        start_up(args.rounds or 21)


if __name__ == "__main__":
    main()
