"""What a plain ``mcpi estimate`` and its worker import before the handshake, by ``-X importtime``.

    python benchmarks/imports.py [--rounds 5] [--against PYTHON] [MODULE ...]

Runs ``python -X importtime -m mcpi_coordinator estimate -n 1000 -w 1 --no-progress -s 1``
(no --checkpoint/--resume, --verify, --part or --plot; the default log format) ``--rounds``
times after one untimed run that writes the bytecode caches (``PYTHONDONTWRITEBYTECODE``
is removed from its environment, as for an installed package), and prints the number of
module names loaded (a name tried twice counted once), the sum over modules of each one's
least self time (the least of the rounds: on a shared machine the least is the figure
that moves least with the load), and
for each MODULE named its least self and cumulative times. ``--against PYTHON`` does the
same for another installation (a worktree of the code before a change, with its own venv),
each round run beside ours so that both see the same load. CPU spent importing, not wall:
``benchmarks/tiny.py`` times the whole command.

The same for the worker, started as that installation's ``mcpi estimate`` starts it at its
default log level (``launch.early.worker_argv``: ``python -P -m mcpi_worker --log-level
warning`` since its workers write no line below warning there; without the option before),
its input at an end at once: everything it imports before it reads a request.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

COMMAND = ["-X", "importtime", "-m", "mcpi_coordinator", "estimate", "-n", "1000", "-w", "1", "--no-progress",
           "-s", "1"]  # fmt: skip
SHOWN = ("mcpi_coordinator.cli.estimate", "mcpi_coordinator.cli.runs", "mcpi_coordinator.run.estimate",
         "mcpi_coordinator.run.checkpoint", "sqlite3", "mcpi_coordinator.run.verify", "mcpi_coordinator.run.parts",
         "mcpi_coordinator.launch.remote", "structlog", "structlog.dev", "asyncio", "trio")  # fmt: skip
WORKER_SHOWN = ("mcpi_worker.main", "mcpi_worker.kernels", "numpy", "msgpack", "structlog", "asyncio")
WORKER_ARGV = """
import json
from mcpi_coordinator.launch import early
try:
    argv = early.worker_argv("warning")
except TypeError:  # an installation whose workers are started alike at every level
    argv = early.worker_argv()
print(json.dumps(argv[1:]))
"""
"""The worker's arguments as that installation's ``mcpi estimate`` gives them at its default level."""


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("MCPI_")}


def worker_command(python: str, cwd: str) -> list[str]:
    done = subprocess.run([python, "-c", WORKER_ARGV], env=environment(), cwd=cwd, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, check=True)  # fmt: skip
    return ["-X", "importtime", *json.loads(done.stdout)]


def one_run(python: str, cwd: str, command: list[str]) -> dict[str, tuple[int, int]]:
    """Each module's (self, cumulative) microseconds in one run of ``command``."""
    done = subprocess.run([python, *command], env=environment(), cwd=cwd, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, check=True)  # fmt: skip
    times: dict[str, tuple[int, int]] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line.removeprefix("import time:").split("|")
        times[name.strip()] = (int(own), int(cumulative))
    return times


def report(label: str, rounds: list[dict[str, tuple[int, int]]], shown: tuple[str, ...]) -> None:
    least = {name: min(r[name][0] for r in rounds if name in r) for name in rounds[0]}
    counts = sorted({len(r) for r in rounds})
    total = sum(least.values()) / 1000
    print(f"{label}: {'/'.join(map(str, counts))} module names, sum of least self times {total:.1f} ms")
    for name in shown:
        if name not in rounds[0]:
            print(f"  {name}: not loaded")
            continue
        own = least[name] / 1000
        cumulative = min(r[name][1] for r in rounds if name in r) / 1000
        print(f"  {name}: self {own:.2f} ms, cumulative {cumulative:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", metavar="PYTHON", help="another installation's python, run beside ours")
    parser.add_argument("modules", nargs="*", default=list(SHOWN), help="modules whose times to show")
    args = parser.parse_args()
    pythons = {"mcpi": sys.executable} | ({"--against": args.against} if args.against else {})
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as neutral:  # each imports its own installation, not a checkout here
        commands = {
            (f"{label} estimate", python, tuple(COMMAND)) for label, python in pythons.items()
        } | {(f"{label} worker", python, tuple(worker_command(python, neutral))) for label, python in pythons.items()}
        runs = sorted(commands)
        for _, python, command in runs:
            one_run(python, neutral, list(command))  # untimed: writes the bytecode caches
        rounds: dict[str, list[dict[str, tuple[int, int]]]] = {label: [] for label, _, _ in runs}
        for _ in range(args.rounds):
            for label, python, command in runs:
                rounds[label].append(one_run(python, neutral, list(command)))
    for label, _, command in runs:
        print(f"{label}: python {' '.join(command)}")
        report(label, rounds[label], tuple(args.modules) if label.endswith("estimate") else WORKER_SHOWN)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) after")


if __name__ == "__main__":
    main()
