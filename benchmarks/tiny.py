"""A tiny run as a whole command: ``mcpi estimate --points 1000`` against the plain script.

Issue 22's target: the wall of ``mcpi estimate --points 1000`` from a cold start is at
most 1.5x that of ``benchmarks/ppe_numpy.py`` (ProcessPoolExecutor + NumPy counting the
same 1000 points on 2 processes), medians of 9, the two interleaved so that both see the
same load. Both print their count; the benchmark checks they agree (the same points).

A third row, ``mcpi (pool starts)``, runs the same command with ``MCPI_WORKER_CMD`` set to
the very worker command: then nothing is started early (launch/early.py), and the pool
launches its worker once the coordinator has loaded, as before issue 22.

Each row gives the median wall and the median CPU time of the whole process tree (the
command and every process it waited for): on a loaded machine the CPU times move less
than the walls. Bytecode caches are allowed for every run, as for an installed package
(``PYTHONDONTWRITEBYTECODE`` is removed from their environment, and one untimed round
writes the caches): where they are forbidden, each ``mcpi`` command compiles its own
sources again, which the script, one file, hardly pays. ``--against PYTHON`` adds a row
for another installation's ``mcpi`` (a worktree of the code before a change, with its
own venv), run from a neutral directory like the others, so each imports its own code.

``--mcpi-args "WORDS"`` adds words to every ``mcpi estimate`` row's command line (not to the
script's): ``--mcpi-args "--log-level debug --log-format json --startup-timeout 300"``
times the command lines a timeline or the tests use, which started no worker early
before issue 22's third round.

``benchmarks/timeline.py`` shows where the wall goes, both processes, from strace's
timestamps (the spawn, the handshake, the sample, the end). ``--timeline`` adds one run
of ``mcpi estimate`` with debug logs as JSON lines: when, after the command was started,
each logged event came (the worker's start, its welcome, the request, the shutdown, the
exit); at that level both processes load structlog first, which moves every moment.
``python -X importtime -m mcpi_coordinator estimate ...`` and pyinstrument show the
coordinator's own share.

    python benchmarks/tiny.py [--rounds 9] [--points 1000] [--workers 2] [--timeline] [--against PYTHON]
                              [--mcpi-args "WORDS"]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from mcpi_coordinator.launch import early

HERE = Path(__file__).resolve().parent
TARGET = 1.5


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


NEUTRAL = tempfile.gettempdir()
"""Where the commands run: ``python -m`` puts its working directory first on the path, and
from a checkout that would make every interpreter import that checkout's code."""


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **(extra or {})}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of one command (its whole tree), and its stdout."""
    cpu = children_cpu_s()
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, cwd=NEUTRAL)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed ({done.returncode}): {done.stderr.strip()}")
    return wall, children_cpu_s() - cpu, done.stdout


def timeline(argv: list[str]) -> None:
    started = datetime.now().astimezone()
    t0 = time.perf_counter()
    env = environment({"MCPI_LOG_LEVEL": "debug", "MCPI_LOG_FORMAT": "json"})
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, cwd=NEUTRAL)
    wall = time.perf_counter() - t0
    print(f"\ntimeline of one run ({wall:.3f} s in all, from the command's start):")
    for line in done.stderr.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        when = datetime.fromisoformat(record.get("timestamp", "").replace("Z", "+00:00"))
        who = f"worker {record['worker']}" if "worker" in record else "coordinator"
        print(f"  {(when - started).total_seconds():7.3f} s  {who:<12} {record.get('event')}")
    print(f"  {wall:7.3f} s  {'coordinator':<12} exited")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeline", action="store_true")
    parser.add_argument("--against", metavar="PYTHON", help="also time this interpreter's mcpi estimate")
    parser.add_argument("--mcpi-args", default="", metavar="WORDS", help="more words for each mcpi command line")
    args = parser.parse_args()
    common = ["--points", str(args.points), "--seed", str(args.seed)]
    more = shlex.split(args.mcpi_args)
    ours = [sys.executable, "-m", "mcpi_coordinator", "estimate", *common, "--workers", str(args.workers), "--json"]
    ours += more
    reference = [sys.executable, str(HERE / "ppe_numpy.py"), *common, "--workers", str(args.workers)]
    print(f"tiny run: {args.points} points, {args.workers} workers, {args.rounds} rounds, interleaved")
    if more:
        print(f"mcpi estimate rows with: {shlex.join(more)}")
    print(f"before: {load()}")
    late = environment({"MCPI_WORKER_CMD": shlex.join(early.worker_argv("warning"))})  # the default level's
    runs: list[tuple[str, list[str], dict[str, str]]] = [
        ("mcpi estimate", ours, environment()),
        ("ppe+numpy script", reference, environment()),
        ("mcpi (pool starts)", ours, late),
    ]
    if args.against:
        runs.append(("mcpi (--against)", [args.against, *ours[1:]], environment()))
    for _, argv, env in runs:  # untimed: writes the bytecode caches
        timed(argv, env)
    walls: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    cpus: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for round_index in range(args.rounds):
        shift = round_index % len(runs)  # no command always first (or last)
        counts = {}
        for name, argv, env in runs[shift:] + runs[:shift]:
            wall, cpu, out = timed(argv, env)
            walls[name].append(wall)
            cpus[name].append(cpu)
            counts[name] = json.loads(out)["inside"]
        if len(set(counts.values())) != 1:
            raise SystemExit(f"the commands counted different points: {counts}")
        print(f"  round {round_index + 1}: " + ", ".join(f"{n} {walls[n][-1]:.3f} s" for n in walls), flush=True)
    medians = {name: statistics.median(w) for name, w in walls.items()}
    reference_s = medians["ppe+numpy script"]
    print(f"\nmedians of {args.rounds} (wall, and CPU of the whole process tree):")
    for name, wall in medians.items():
        cpu = statistics.median(cpus[name])
        print(f"  {name:<20} {wall:.3f} s  {wall / reference_s:.2f}x the script   CPU {cpu:.3f} s")
    ratio = medians["mcpi estimate"] / reference_s
    print(f"target: mcpi estimate <= {TARGET}x the script: {ratio:.2f}x {'MET' if ratio <= TARGET else 'NOT MET'}")
    print(f"after: {load()}")
    if args.timeline:
        timeline(ours)


if __name__ == "__main__":
    main()
