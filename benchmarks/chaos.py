"""Chaos run: ``mcpi estimate`` while workers are SIGKILLed at random, every half second.

    python benchmarks/chaos.py                    # 1e10 points, 2 workers, a kill every 0.5 s
    python benchmarks/chaos.py --points 3e10 --workers 4 --interval 0.25

It runs the same ``mcpi estimate --json`` twice, undisturbed and under fire, and
prints every kill, the restarts the coordinator reports, and whether the two counts
are identical (they must be: chunks are deterministic, and a dead worker's chunks
are requeued). Exit status 0 only if they are and no worker outlived the run.

The killer picks among workers that have done some work (used CPU). A worker killed
again and again before it answers anything looks exactly like a broken worker
command, and the pool is meant to give up on those (crash-loop detection); this run
is about workers dying mid-work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from mcpi_coordinator.arguments import count, positive_count, seconds
from mcpi_coordinator.testing.processes import still_running

WORK_CPU_S = 0.1
"""CPU seconds beyond start-up after which a worker counts as having done work
(a few 10-million-point chunks)."""


@dataclass(frozen=True)
class Kill:
    at_s: float
    pid: int
    cpu_s: float


@dataclass(frozen=True)
class Run:
    report: dict[str, object]
    wall_s: float
    kills: list[Kill]
    workers_seen: set[int]
    stderr: str


def mcpi() -> str:
    script = Path(sys.executable).with_name("mcpi")
    return str(script) if script.exists() else "mcpi"


def startup_cpu_s() -> float:
    """CPU seconds an idle mcpi-worker uses to start (imports), read once it has logged
    that it is up: a worker below this plus ``WORK_CPU_S`` has not done any work."""
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("mcpi-worker"))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert worker.stderr is not None
    worker.stderr.readline()  # "worker_started"
    cpu = psutil.Process(worker.pid).cpu_times().user
    worker.kill()
    worker.communicate()
    return cpu


def run_estimate(args: argparse.Namespace, *, chaos: bool, busy_cpu_s: float = 0.0) -> Run:
    command = [
        mcpi(), "estimate", "--json", "--seed", str(args.seed), "--points", str(args.points),
        "--chunk-size", str(args.chunk_size), "--workers", str(args.workers),
    ]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kills: list[Kill] = []
    seen: set[int] = set()
    done = threading.Event()
    rng = random.Random(args.chaos_seed)

    def killer() -> None:
        coordinator = psutil.Process(process.pid)
        next_kill = time.monotonic() + args.interval
        while not done.is_set():
            try:
                children = coordinator.children()
            except psutil.NoSuchProcess:
                return
            seen.update(child.pid for child in children)
            if chaos and time.monotonic() >= next_kill:
                next_kill += args.interval
                busy = []
                for child in children:
                    try:
                        cpu = child.cpu_times().user
                    except psutil.NoSuchProcess:
                        continue
                    if cpu >= busy_cpu_s:
                        busy.append((child, cpu))
                if busy:
                    victim, cpu = rng.choice(busy)
                    try:
                        victim.send_signal(signal.SIGKILL)
                    except psutil.NoSuchProcess:
                        continue
                    kill = Kill(time.monotonic() - started, victim.pid, cpu)
                    kills.append(kill)
                    print(f"  {kill.at_s:7.2f} s  SIGKILL worker pid {kill.pid} "
                          f"(after {kill.cpu_s:.2f} s of CPU)", flush=True)
            done.wait(0.02)

    watcher = threading.Thread(target=killer, daemon=True)
    watcher.start()
    out, err = process.communicate()
    wall = time.monotonic() - started
    done.set()
    watcher.join()
    if process.returncode != 0:
        sys.exit(f"mcpi estimate failed (exit {process.returncode}): {err.strip()[-2000:]}")
    return Run(json.loads(out), wall, kills, seen, err)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=positive_count, default=10**10)
    parser.add_argument("--chunk-size", type=positive_count, default=10**7)
    parser.add_argument("--workers", type=positive_count, default=2)
    parser.add_argument("--seed", type=count, default=20240531)
    parser.add_argument("--interval", type=seconds, default=0.5, help="seconds between kills")
    parser.add_argument("--chaos-seed", type=int, default=1, help="seeds the choice of victims")
    args = parser.parse_args()

    load = os.getloadavg()
    print(f"mcpi chaos: {args.points:.3g} points, chunks of {args.chunk_size:.3g}, "
          f"{args.workers} workers, seed {args.seed}; a SIGKILL every {args.interval} s")
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")

    print("\nundisturbed run ...", flush=True)
    calm = run_estimate(args, chaos=False)
    print(f"  inside {calm.report['inside']}, restarts {calm.report['restarts']}, "
          f"wall {calm.wall_s:.2f} s")

    busy_cpu = startup_cpu_s() + WORK_CPU_S
    print(f"\nrun under fire (victims: workers past {busy_cpu:.2f} s of CPU, i.e. "
          f"start-up plus {WORK_CPU_S} s of work):", flush=True)
    fire = run_estimate(args, chaos=True, busy_cpu_s=busy_cpu)
    left = still_running(fire.workers_seen | calm.workers_seen)
    print(f"  inside {fire.report['inside']}, restarts {fire.report['restarts']}, "
          f"wall {fire.wall_s:.2f} s")

    same = fire.report["inside"] == calm.report["inside"]
    print("\nsummary")
    print(f"  kills             {len(fire.kills)}")
    print(f"  restarts          {fire.report['restarts']} (reported by mcpi estimate --json)")
    print(f"  worker processes  {len(fire.workers_seen)} seen under fire, {len(left)} still running")
    print(f"  count             {fire.report['inside']} vs {calm.report['inside']} undisturbed: "
          f"{'IDENTICAL' if same else 'DIFFERENT'}")
    print(f"  wall time         {fire.wall_s:.2f} s vs {calm.wall_s:.2f} s "
          f"(x{fire.wall_s / calm.wall_s:.2f})")
    load = os.getloadavg()
    print(f"  load average now  {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0 if same and not left and fire.report["points"] == args.points else 1


if __name__ == "__main__":
    sys.exit(main())
