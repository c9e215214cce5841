"""Big local fleets and one ssh host: start-up, clean-up, and what a worker costs.

    python benchmarks/fleet.py costs                  # fds and memory of one worker
    python benchmarks/fleet.py startup [--workers 8,32,64] [--rounds 3]
    python benchmarks/fleet.py cleanup [--workers CAP] [--rounds 3]
    python benchmarks/fleet.py ssh [--workers 64] [--points 4e8] [--rounds 3]

- **costs**: descriptors the coordinator holds per worker (1, 4 and 16 workers), and a
  worker's resident memory idle and at its peak over samples of 1e5..1e9 points: the
  figures ``launch/capacity.py`` counts with.
- **startup**: seconds until ``WorkerPool(N)`` has every worker ready, with the
  default start-up limit (two per CPU) and with none (all N at once).
- **cleanup**: ``mcpi estimate --workers N`` (default: this machine's cap), every
  worker computing, then Ctrl-C (SIGINT to its group: the exit code and seconds to
  exit) or SIGKILL (seconds until no worker is left); and both again 3 s into the
  start-up, while workers are still starting. Workers are found in the process table
  by a marker in their environment.
- **ssh**: ``--host 127.0.0.1*N`` against one real sshd (``tests/sshd.py``, default
  ``MaxStartups``: one connection running ``mcpi-worker --jobs N``) against ``--workers
  N`` locally and one local ``mcpi-worker --jobs N``: wall time (start-up included),
  exact count, retired workers, restarts, and the most ssh clients seen at once.

Medians over ``--rounds``; the load average is printed with every figure (the machine
is shared). Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import trio

from mcpi_coordinator.cli.logging import configure_logging
from mcpi_coordinator.launch.capacity import MachineLimits, default_max_starting, fleet_cap
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool

MCPI = [sys.executable, "-m", "mcpi_coordinator", "estimate"]
MARKER = "MCPI_FLEET_BENCH"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} CPUs"


def median(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})"


# ------------------------------------------------------------------ costs


async def _costs() -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for workers in (1, 4, 16):
        async with WorkerPool(workers) as pool:
            per = (open_fds() - before) / workers
            print(f"  {workers:2} workers: {per:.1f} descriptors each in the coordinator ({before} before)")
    async with WorkerPool(1) as pool:
        [worker] = pool.stats.workers
        assert worker.pid is not None
        process = psutil.Process(worker.pid)
        idle = process.memory_info()
        unique = process.memory_full_info().uss
        peak = idle.rss
        for points in (10**5, 10**6, 10**7, 10**8, 10**9):
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, process.memory_info().rss)
                        await trio.sleep(0.005)

                nursery.start_soon(watch)
                await pool.sample(Chunk(seed=1, stream=0, points=points))
                nursery.cancel_scope.cancel()
    print(f"  one worker: RSS {idle.rss / 2**20:.1f} MiB idle (unique {unique / 2**20:.1f} MiB), "
          f"{peak / 2**20:.1f} MiB at its peak over 1e5..1e9-point samples; {load()}")


# ------------------------------------------------------------------ start-up


async def _time_startup(workers: int, max_starting: int) -> float:
    started = time.perf_counter()
    async with WorkerPool(workers, max_starting=max_starting, startup_timeout=600):
        return time.perf_counter() - started


def startup(sizes: list[int], rounds: int) -> None:
    for workers in sizes:
        limits = {"two per CPU": default_max_starting(), "all at once": workers}
        times: dict[str, list[float]] = {name: [] for name in limits}
        for _ in range(rounds):
            for name, limit in limits.items():
                times[name].append(trio.run(_time_startup, workers, limit))
        print(f"  {workers:4} workers, " + "; ".join(f"{n}: {median(t)}" for n, t in times.items())
              + f"; {load()}")


# ------------------------------------------------------------------ clean-up


def marked(token: str, exclude: int) -> list[int]:
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if (process.pid != exclude and process.environ().get(MARKER) == token
                    and process.status() != psutil.STATUS_ZOMBIE):
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError
        time.sleep(step)
    return time.monotonic() - started


def one_cleanup(workers: int, how: str, when: str) -> tuple[float, str]:
    """One run: strike (``how``: INT or KILL) once every worker computes, or 3 s into the
    start-up (``when``: busy or starting); returns the seconds until no worker is left
    and what the coordinator said (exit code)."""
    token = secrets.token_hex(6)
    coordinator = subprocess.Popen(
        [*MCPI, "--workers", str(workers), "--points", "1e13", "--chunk-size", "1e9",
         "--seed", "1", "--startup-timeout", "600"],
        env=dict(os.environ, **{MARKER: token}), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        if when == "busy":
            def all_busy() -> bool:
                if coordinator.poll() is not None:
                    problem = coordinator.stderr.read() if coordinator.stderr else ""
                    raise RuntimeError(f"mcpi estimate exited {coordinator.returncode}: {problem}")
                try:
                    children = psutil.Process(coordinator.pid).children()
                    return len(children) == workers and all(c.cpu_times().user > 0.3 for c in children)
                except psutil.NoSuchProcess:
                    return False
            _wait_until(all_busy, 1800, step=0.5)
        else:
            time.sleep(3.0)
        alive = len(marked(token, coordinator.pid))
        struck = time.monotonic()
        if how == "KILL":
            coordinator.kill()
            coordinator.wait()
            said = "SIGKILL"
        else:
            os.killpg(coordinator.pid, signal.SIGINT)
            code = coordinator.wait(timeout=120)
            said = f"exit {code} after {time.monotonic() - struck:.2f} s"
        _wait_until(lambda: not marked(token, coordinator.pid), 120)
        return time.monotonic() - struck, f"{said}, {alive} workers alive when struck"
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
        for pid in marked(token, coordinator.pid):
            os.kill(pid, signal.SIGKILL)


def cleanup(workers: int, rounds: int) -> None:
    for when in ("busy", "starting"):
        for how in ("INT", "KILL"):
            times = []
            notes = []
            for _ in range(rounds):
                took, note = one_cleanup(workers, how, when)
                times.append(took)
                notes.append(note)
            print(f"  {workers} workers {when}, SIG{how}: no worker left after {median(times)}; "
                  f"{'; '.join(notes)}; {load()}")


# ------------------------------------------------------------------ ssh


def _run(args: list[str], watch_port: int | None = None) -> tuple[float, dict[str, Any], int]:
    peak = 0
    done = threading.Event()

    def count_ssh() -> None:
        nonlocal peak
        while not done.is_set():
            clients = 0
            for process in psutil.process_iter(["name", "cmdline"]):
                words = process.info["cmdline"] or []
                if process.info["name"] == "ssh" and str(watch_port) in words:
                    clients += 1
            peak = max(peak, clients)
            time.sleep(0.05)

    watcher = threading.Thread(target=count_ssh, daemon=True)
    if watch_port is not None:
        watcher.start()
    started = time.perf_counter()
    run = subprocess.run(
        [*MCPI, "--json", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    wall = time.perf_counter() - started
    done.set()
    if run.returncode != 0:
        raise RuntimeError(run.stderr)
    return wall, json.loads(run.stdout), peak


def ssh(workers: int, points: str, rounds: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from sshd import SshDaemon

    daemon = SshDaemon(Path(tempfile.mkdtemp()) / "sshd")
    daemon.start()
    common = ["--points", points, "--seed", "3", "--startup-timeout", "120"]
    try:
        walls: dict[str, list[float]] = {"local": [], "local --jobs": [], "ssh": []}
        counts = set()
        one_process = shlex.join([sys.executable, "-m", "mcpi_worker", "--jobs", str(workers)])
        for round_number in range(rounds):
            wall, local, _ = _run(["--workers", str(workers), *common])
            walls["local"].append(wall)
            counts.add(local["inside"])
            wall, local, _ = _run(["--workers", "1", "--worker-cmd", one_process, *common])
            walls["local --jobs"].append(wall)
            counts.add(local["inside"])
            wall, remote, peak = _run(["--workers", "0", *common, *daemon.cli_args(workers)], daemon.port)
            walls["ssh"].append(wall)
            counts.add(remote["inside"])
            retired = sum(1 for w in remote["per_worker"] if w["state"] == "retired")
            hosts = [(h["name"], h["workers"], h["jobs"]) for h in remote["hosts"]]
            print(f"  round {round_number + 1}: local {walls['local'][-1]:.2f} s, "
                  f"local --jobs {walls['local --jobs'][-1]:.2f} s, ssh {wall:.2f} s: "
                  f"{retired} retired, {remote['restarts']} restarts, at most {peak} ssh clients "
                  f"at once, hosts {hosts}; {load()}")
    finally:
        daemon.stop()
    ssh_wall = statistics.median(walls["ssh"])
    print(f"  --workers {workers}: {median(walls['local'])}")
    print(f"  --workers 1 --worker-cmd 'mcpi-worker --jobs {workers}': {median(walls['local --jobs'])}")
    print(f"  --host 127.0.0.1*{workers}: {median(walls['ssh'])}")
    print(f"  ratio ssh / {workers} local workers {ssh_wall / statistics.median(walls['local']):.2f}, "
          f"ssh / one local --jobs {workers} {ssh_wall / statistics.median(walls['local --jobs']):.2f}; "
          f"identical counts: {len(counts) == 1}; {load()}")


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("costs", "startup", "cleanup", "ssh"))
    parser.add_argument("--workers", default=None, help="a count, or for startup a comma-separated list")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--points", default="4e8")
    args = parser.parse_args()
    configure_logging("warning")
    print(f"{args.what}: {load()}")
    if args.what == "costs":
        trio.run(_costs)
    elif args.what == "startup":
        startup([int(n) for n in (args.workers or "8,32,64").split(",")], args.rounds)
    elif args.what == "cleanup":
        cap = fleet_cap(MachineLimits.here(), max_starting=default_max_starting())
        print(f"  this machine's cap: {cap.local} local workers ({cap.why()})")
        # MemAvailable moves while others work: 2% below the cap stays under it.
        cleanup(int(args.workers or cap.local * 49 // 50), args.rounds)
    else:
        ssh(int(args.workers or 64), args.points, args.rounds)


if __name__ == "__main__":
    main()
