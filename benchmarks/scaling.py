"""Does the pool scale, does it keep up with ProcessPoolExecutor, is its memory flat in N?

Everything is measured in one run, side by side, in rotating order, and reported as
medians over ``--rounds`` (the machine is shared; print the load with the figures):

1. **Scaling**: 1e9 points on a started pool of 1 worker vs 2 workers (warm: the pool
   is up, only ``run_estimate`` is timed). Target speed-up >= 1.9.
2. **Against ProcessPoolExecutor**: the same seeded chunks through the same numpy
   kernel with a plain ``ProcessPoolExecutor(2).map`` (warm: executor started and
   used once), and once more with each executor worker in a session of its own
   (``initializer=os.setsid``, as mcpi-worker is: under load, Linux's scheduler
   autogrouping shares CPU per session, which favours processes in their own).
   Target: ours <= 1.0x the plain executor.
   Then **cold**, as a user runs them: ``mcpi estimate --workers 2`` as a process vs a
   plain executor script as a process, interpreter start-up included.
3. **Memory flat in N**: the coordinator's peak RSS for ``mcpi estimate`` at 1e8
   points vs 1e13 points stopped by ``--max-time`` (chunks are generated lazily; the
   only per-chunk state is 16 bytes of (points, inside) kept for plots).

4. With ``--implementations`` (and nothing else): the numpy kernel's two
   implementations side by side, in rotating order: 1e9 points on 2 started
   workers, each worker having run a sample first (so under ``fused`` it has loaded
   numba), with ``MCPI_NUMPY_IMPL=fused`` vs ``numpy`` (target: fused >= 1.4x faster);
   then whole ``mcpi estimate --workers 2`` commands, start-up included, at 1e7
   points (``auto``, the default, vs ``numpy``, today's path: no slower) and at
   ``--points`` (``auto``, ``fused``, ``numpy``).

5. With ``--cold`` (and nothing else): issue 18's whole cold commands, what a user runs
   (fresh processes, the default ``MCPI_NUMPY_IMPL=auto``), each in interleaved rounds,
   wall time and the CPU time of the command and its children:
   - ``mcpi estimate --points 1e9 --workers 2`` vs ``benchmarks/ppe_numpy.py``,
     ProcessPoolExecutor + NumPy on 2 processes as a user writes it, counting the same
     points (target <= 0.4x);
   - ``--workers 1`` vs ``--workers 2`` at ``--big`` points (1e10; target speed-up >= 1.8);
   - ``--workers 1 --worker-cmd "mcpi-worker --jobs 2"`` vs ``--workers 2`` (<= 1.1x);
   - ``--chunk-size 1e4`` vs ``1e7`` at 1e9 points (<= 1.3x).

   ``--against PYTHON`` runs the big ones of another installation too (that interpreter's
   ``mcpi``, say a checkout of main before a change), in the same rounds, and prints its
   speed-up and each of ours against its own. Each round says how much CPU the rest of the
   machine took during its busiest command (``/proc/stat``): two workers on two cores have
   no idle core to absorb it, one worker has (a model: up to half of it lands on two
   workers' wall, none on one worker's). ``--quiet-only MS`` keeps only rounds where
   it stayed under MS during every command (trying up to four times ``--rounds``).

   "Cold" is a fresh process, as after an install and a first run: numba's and the object
   cache are warmed first, and Python's bytecode caches are allowed (an untimed round
   writes them; ``PYTHONDONTWRITEBYTECODE`` is dropped from the environment, as
   ``tiny.py`` does), since forbidding them makes every mcpi process compile its sources
   on each start, which no installed package does.

6. With ``--first-run`` (and nothing else): the first run after an install, numba's cache
   cold (a fresh ``NUMBA_CACHE_DIR`` each command): ``mcpi estimate --points 1e9
   --workers 2`` under ``auto`` vs ``MCPI_NUMPY_IMPL=numpy`` (target: not slower).

    python benchmarks/scaling.py [--points 1e9] [--rounds 3] [--skip-cold] [--implementations]
    python benchmarks/scaling.py --cold [--rounds 3] [--big 1e10] [--compare-load] [--against PYTHON] [--quiet-only MS]
    python benchmarks/scaling.py --first-run [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil
import trio

from mcpi_coordinator.arguments import count
from mcpi_coordinator.cli.logging import configure_logging
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.run.estimate import DEFAULT_CHUNK_SIZE, iter_chunks, run_estimate
from mcpi_coordinator.testing.processes import peak_rss_until_exit
from mcpi_worker.kernels import count_numpy

SEED = 20240611
MCPI = [sys.executable, "-m", "mcpi_coordinator"]

PLAIN_EXECUTOR_SCRIPT = """
import sys
from concurrent.futures import ProcessPoolExecutor
from mcpi_worker.kernels import count_numpy
seed, points, chunk, workers = map(int, sys.argv[1:])
streams = range(-(-points // chunk))
sizes = [min(chunk, points - s * chunk) for s in streams]
with ProcessPoolExecutor(workers) as executor:
    print(sum(executor.map(count_numpy, [seed] * len(sizes), streams, sizes)))
"""


WARM_NOW = "from mcpi_worker.kernels.warm import main; main(niceness=0, wait=True)"
"""numba's cache and our object cache warm before any timing, at this priority (waiting
for a warming process already at work)."""


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} CPUs"


def run_rounds(
    contenders: dict[str, Callable[[], tuple[float, int]]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, set[int]]]:
    """Every contender once a round, in rotating order: the seconds and counts of each."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    counts: dict[str, set[int]] = {name: set() for name in contenders}
    names = list(contenders)
    for name in names:  # untimed: writes the bytecode caches, starts nothing cold in the rounds
        contenders[name]()
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, inside = contenders[name]()
            times[name].append(seconds)
            counts[name].add(inside)
        last = ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names)
        print(f"  round {round_number + 1}: {last}; {load()}")
    return times, counts


# ------------------------------------------------------------------ warm contenders


def chunk_arguments(points: int) -> tuple[list[int], list[int], list[int]]:
    chunks = list(iter_chunks(SEED, points, DEFAULT_CHUNK_SIZE))
    return [c.seed for c in chunks], [c.stream for c in chunks], [c.points for c in chunks]


async def _time_pool(workers: int, points: int) -> tuple[float, int]:
    async with WorkerPool(workers) as pool:
        started = time.perf_counter()
        result = await run_estimate(pool, points=points, seed=SEED)
        return time.perf_counter() - started, result.inside


def trio_pool(workers: int) -> Callable[[int], tuple[float, int]]:
    return lambda points: trio.run(_time_pool, workers, points)


def process_pool(workers: int, setsid: bool = False) -> Callable[[int], tuple[float, int]]:
    def run(points: int) -> tuple[float, int]:
        seeds, streams, sizes = chunk_arguments(points)
        with ProcessPoolExecutor(workers, initializer=os.setsid if setsid else None) as executor:
            sum(executor.map(count_numpy, [SEED] * workers, range(workers), [1000] * workers))  # start
            started = time.perf_counter()
            inside = sum(executor.map(count_numpy, seeds, streams, sizes))
            return time.perf_counter() - started, inside

    return run


# ------------------------------------------------------------------ cold contenders


def cold_mcpi(points: int) -> tuple[float, int]:
    started = time.perf_counter()
    run = subprocess.run(
        [*MCPI, "estimate", "--json", "--workers", "2", "--seed", str(SEED), "--points", str(points)],
        capture_output=True, text=True, check=True,
    )
    return time.perf_counter() - started, json.loads(run.stdout)["inside"]


def cold_executor_script(points: int) -> tuple[float, int]:
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", PLAIN_EXECUTOR_SCRIPT, str(SEED), str(points), str(DEFAULT_CHUNK_SIZE), "2"],
        capture_output=True, text=True, check=True,
    )
    return time.perf_counter() - started, int(run.stdout)


# ------------------------------------------------------------------ numpy kernel implementations

WORKER = str(Path(sys.executable).with_name("mcpi-worker"))


async def _time_started_pool(implementation: str, workers: int, points: int) -> tuple[float, int]:
    """``run_estimate`` timed on a pool whose every worker has answered a sample."""
    command = ["env", f"MCPI_NUMPY_IMPL={implementation}", WORKER]
    async with WorkerPool(workers, command) as pool:
        stream = 10**9  # far from the streams the estimate uses
        while min(worker.chunks for worker in pool.stats.workers) == 0:
            warm = [Chunk(seed=SEED, stream=stream + i, points=2_000_000) for i in range(2 * workers)]
            async with pool.imap_unordered(warm) as results:
                async for _ in results:
                    pass
            stream += 2 * workers
        started = time.perf_counter()
        result = await run_estimate(pool, points=points, seed=SEED)
        return time.perf_counter() - started, result.inside


def cold_estimate(implementation: str, points: int) -> Callable[[], tuple[float, int]]:
    def run() -> tuple[float, int]:
        started = time.perf_counter()
        done = subprocess.run(
            [*MCPI, "estimate", "--json", "--workers", "2", "--seed", str(SEED), "--points", str(points)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "MCPI_NUMPY_IMPL": implementation},
        )
        return time.perf_counter() - started, json.loads(done.stdout)["inside"]

    return run


def compare_implementations(points: int, rounds: int) -> None:
    contenders: dict[str, Callable[[], tuple[float, int]]] = {
        "x2 started, fused": lambda: trio.run(_time_started_pool, "fused", 2, points),
        "x2 started, numpy": lambda: trio.run(_time_started_pool, "numpy", 2, points),
        "estimate 1e7, auto": cold_estimate("auto", 10**7),
        "estimate 1e7, numpy": cold_estimate("numpy", 10**7),
        f"estimate {points:.0e}, auto": cold_estimate("auto", points),
        f"estimate {points:.0e}, fused": cold_estimate("fused", points),
        f"estimate {points:.0e}, numpy": cold_estimate("numpy", points),
    }
    print(f"numpy kernel implementations; {points:.0e} points, {rounds} rounds; {load()}")
    times, counts = run_rounds(contenders, rounds)
    names = list(contenders)
    median = {name: statistics.median(values) for name, values in times.items()}
    print()
    for name in names:
        print(f"  {name:26} median {median[name]:6.3f} s   ({', '.join(f'{t:.2f}' for t in times[name])})")
    big = [name for name in names if "1e7" not in name]
    small = [name for name in names if "1e7" in name]
    for group in (big, small):
        found = set().union(*(counts[name] for name in group))
        print(f"  {', '.join(group)}: same inside: {len(found) == 1} ({sorted(found)})")
    print()
    ratio = median["x2 started, numpy"] / median["x2 started, fused"]
    print(f"started pool, fused vs numpy:        {ratio:.2f}x faster   (target >= 1.4)")
    ratio = median["estimate 1e7, auto"] / median["estimate 1e7, numpy"]
    print(f"mcpi estimate 1e7, auto / numpy:     {ratio:.3f}   (target <= 1.0: no slower than before)")
    for implementation in ("auto", "fused"):
        ratio = median[f"estimate {points:.0e}, numpy"] / median[f"estimate {points:.0e}, {implementation}"]
        print(f"mcpi estimate {points:.0e}, {implementation} vs numpy: {ratio:.2f}x faster")


# ------------------------------------------------------------------ issue 18: whole cold commands

PPE_NUMPY = str(Path(__file__).with_name("ppe_numpy.py"))


def machine_busy_s() -> float:
    """CPU seconds every CPU of the machine has been busy since boot (``/proc/stat``: all
    but idle and I/O wait), at the kernel's tick (10 ms); NaN where there is no such file."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(field) for field in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cold_command(
    argv: list[str], parse: Callable[[str], int], environ: dict[str, str] | None = None
) -> Callable[[], tuple[float, float, int, float]]:
    """``run() -> (wall seconds, CPU seconds of the command and its children, inside, CPU
    seconds the rest of the machine used meanwhile)``; ``environ``: what to set in the
    command's environment. The last is what a shared machine's load took from the run:
    two workers on two cores have no idle core to absorb it, one worker has."""

    def run() -> tuple[float, float, int, float]:
        before, busy = os.times(), machine_busy_s()
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=True, env={**os.environ, **(environ or {})})
        wall = time.perf_counter() - started
        after = os.times()
        cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        return wall, cpu, parse(done.stdout), max(0.0, machine_busy_s() - busy - cpu)

    return run


def mcpi_estimate(
    points: int, *options: str, environ: dict[str, str] | None = None, python: str = sys.executable
) -> Callable[[], tuple[float, float, int, float]]:
    argv = [python, *MCPI[1:], "estimate", "--json", "--seed", str(SEED), "--points", str(points), *options]
    return cold_command(argv, lambda out: int(json.loads(out)["inside"]), environ)


def cold_targets(
    points: int,
    big: int,
    rounds: int,
    compare_load: bool = False,
    against: str | None = None,
    quiet_only: float | None = None,
) -> None:
    subprocess.run([sys.executable, "-P", "-c", WARM_NOW], check=True)
    if against:
        subprocess.run([against, "-P", "-c", WARM_NOW], check=True)
    worker = str(Path(sys.executable).with_name("mcpi-worker"))
    contenders: dict[str, Callable[[], tuple[float, float, int, float]]] = {
        "mcpi -w2": mcpi_estimate(points, "--workers", "2"),
        "executor+numpy x2": cold_command(
            [sys.executable, PPE_NUMPY, "--points", str(points), "--seed", str(SEED), "--workers", "2"],
            lambda out: int(json.loads(out)["inside"]),
        ),
        "mcpi -w2 chunk 1e4": mcpi_estimate(points, "--workers", "2", "--chunk-size", "1e4"),
        "mcpi -w1 big": mcpi_estimate(big, "--workers", "1"),
        "mcpi -w2 big": mcpi_estimate(big, "--workers", "2"),
        "mcpi -w1 --jobs 2 big": mcpi_estimate(big, "--workers", "1", "--worker-cmd", f"{worker} --jobs 2"),
    }
    if against:  # another installation's big runs, in the same rounds
        contenders["against -w1 big"] = mcpi_estimate(big, "--workers", "1", python=against)
        contenders["against -w2 big"] = mcpi_estimate(big, "--workers", "2", python=against)
    if compare_load:
        through_numba = {"MCPI_OBJECT_CACHE": "off"}
        contenders["mcpi -w1 big, numba"] = mcpi_estimate(big, "--workers", "1", environ=through_numba)
        contenders["mcpi -w2 big, numba"] = mcpi_estimate(big, "--workers", "2", environ=through_numba)
    print(f"issue 18, whole cold commands: {points:.0e} and big = {big:.0e} points, {rounds} rounds; {load()}")
    walls: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    others: dict[str, list[float]] = {name: [] for name in contenders}
    counts: dict[str, set[int]] = {name: set() for name in contenders}
    names = list(contenders)
    for name in names:  # untimed: writes the bytecode caches, starts nothing cold in the rounds
        contenders[name]()
    tried = 0
    while len(walls[names[0]]) < rounds and tried < (rounds if quiet_only is None else 4 * rounds):
        shift = tried % len(names)
        tried += 1
        got = {name: contenders[name]() for name in names[shift:] + names[:shift]}
        for name, (_, _, inside, _) in got.items():
            counts[name].add(inside)
        busiest = max(other for _, _, _, other in got.values())
        kept = quiet_only is None or busiest * 1000 < quiet_only
        if kept:
            for name, (wall_s, cpu_s, _, other) in got.items():
                walls[name].append(wall_s)
                cpus[name].append(cpu_s)
                others[name].append(other)
        print(f"  round {tried}: " + ", ".join(f"{n} {got[n][0]:.2f}s" for n in names)
              + f"; the rest of the machine took up to {busiest * 1000:.0f} ms of CPU during a command"
              + ("" if kept else f" (dropped: --quiet-only {quiet_only:g})") + f"; {load()}")  # fmt: skip
    if not walls[names[0]]:
        print(f"  no round was quiet enough in {tried} tries")
        return
    wall = {name: statistics.median(values) for name, values in walls.items()}
    cpu = {name: statistics.median(values) for name, values in cpus.items()}
    print(f"\n  {'':24} {'wall s':>8} {'CPU s':>8} {'others':>8}   (every round's wall)")
    for name in names:
        print(f"  {name:24} {wall[name]:8.3f} {cpu[name]:8.3f} {statistics.median(others[name]):8.3f}   "
              f"({', '.join(f'{t:.2f}' for t in walls[name])})")  # fmt: skip
    print("  others: CPU s the rest of the machine took during the command (median)")
    # The same seed, points and chunk size give the same count on any number of workers.
    same = [counts["mcpi -w2"] | counts["executor+numpy x2"], counts["mcpi -w2 chunk 1e4"]]
    same.append(set().union(*(counts[name] for name in names if "big" in name)))
    print(f"  counts agree (per chunk size, across workers, rounds and the executor): {all(len(c) == 1 for c in same)}")
    print()

    def ratio(a: str, b: str, what: str, target: str) -> None:
        print(f"  {what:58} wall {wall[a] / wall[b]:5.2f}x  CPU {cpu[a] / cpu[b]:5.2f}x   (target {target})")

    ratio("mcpi -w2", "executor+numpy x2", f"mcpi -w2 / executor+NumPy x2 at {points:.0e}", "<= 0.4")
    ratio("mcpi -w1 big", "mcpi -w2 big", f"speed-up 1 -> 2 workers at {big:.0e}", ">= 1.8")
    ratio("mcpi -w1 --jobs 2 big", "mcpi -w2 big", "--workers 1 --jobs 2 / --workers 2", "<= 1.1")
    ratio("mcpi -w2 chunk 1e4", "mcpi -w2", "chunk 1e4 / chunk 1e7", "<= 1.3")
    if against:
        ratio("against -w1 big", "against -w2 big", f"--against: speed-up 1 -> 2 workers at {big:.0e}", "")
        ratio("mcpi -w2 big", "against -w2 big", "--workers 2: ours / --against's", "")
        ratio("mcpi -w1 big", "against -w1 big", "--workers 1: ours / --against's", "")
    if compare_load:
        ratio("mcpi -w1 big, numba", "mcpi -w2 big, numba", f"loaded through numba: speed-up at {big:.0e}", "")
        ratio("mcpi -w1 big", "mcpi -w1 big, numba", "object cache / numba load, --workers 1", "")
        ratio("mcpi -w2 big", "mcpi -w2 big, numba", "object cache / numba load, --workers 2", "")
    print(f"  {load()}")


def first_run_after_install(points: int, rounds: int) -> None:
    """``mcpi estimate --workers 2`` with a fresh ``NUMBA_CACHE_DIR`` each time (numba's
    cache cold, as after an install) under ``auto``, against ``MCPI_NUMPY_IMPL=numpy``;
    the warming process each cold run starts is ended before the next command."""
    import tempfile

    def run(implementation: str) -> tuple[float, float, int]:
        cache = tempfile.mkdtemp(prefix="mcpi-first-run-")
        argv = [*MCPI, "estimate", "--json", "--seed", str(SEED), "--points", str(points), "--workers", "2"]
        environ = {**os.environ, "NUMBA_CACHE_DIR": cache, "MCPI_NUMPY_IMPL": implementation}
        before = os.times()
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=True, env=environ)
        wall = time.perf_counter() - started
        after = os.times()
        cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        for process in psutil.process_iter(["cmdline"]):
            try:
                if "mcpi_worker.kernels.warm" in (process.info["cmdline"] or []) and (
                    process.environ().get("NUMBA_CACHE_DIR") == cache
                ):
                    process.kill()
            except psutil.Error:
                continue
        return wall, cpu, int(json.loads(done.stdout)["inside"])

    names = ("auto, cold cache", "numpy")
    print(f"first run after an install: {points:.0e} points on 2 workers, {rounds} rounds; {load()}")
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in names}
    for round_number in range(rounds):
        for name in names if round_number % 2 == 0 else reversed(names):
            results[name].append(run("auto" if name.startswith("auto") else "numpy"))
        walls = ", ".join(f"{n} {results[n][-1][0]:.2f}s" for n in names)
        print(f"  round {round_number + 1}: {walls}; {load()}")
    wall = {n: statistics.median(r[0] for r in results[n]) for n in names}
    cpu = {n: statistics.median(r[1] for r in results[n]) for n in names}
    for name in names:
        print(f"  {name:18} wall {wall[name]:6.2f} s  CPU {cpu[name]:5.2f} s")
    agree = len({r[2] for n in names for r in results[n]}) == 1
    print(f"  auto with a cold cache / numpy: wall {wall[names[0]] / wall[names[1]]:.2f}x, "
          f"CPU {cpu[names[0]] / cpu[names[1]]:.2f}x (target: not slower); counts agree: {agree}; {load()}")


# ------------------------------------------------------------------ memory


def peak_rss_mib(args: list[str]) -> tuple[float, dict[str, object]]:
    process = psutil.Popen([*MCPI, "estimate", "--json", *args], stdout=subprocess.PIPE, text=True)
    peak = peak_rss_until_exit(process)
    out, _ = process.communicate()
    return peak / 2**20, json.loads(out)


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=count, default=10**9)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--implementations", action="store_true")
    parser.add_argument("--cold", action="store_true", help="issue 18's whole cold commands")
    parser.add_argument("--big", type=count, default=10**10, help="points of --cold's scaling runs")
    parser.add_argument(
        "--compare-load", action="store_true", help="--cold: the big runs again, loaded through numba"
    )
    parser.add_argument(
        "--first-run", action="store_true", help="a cold numba cache under auto vs MCPI_NUMPY_IMPL=numpy"
    )
    parser.add_argument(
        "--against", metavar="PYTHON", help="--cold: the big runs of this interpreter's mcpi too (another tree)"
    )
    parser.add_argument(
        "--quiet-only", type=float, metavar="MS",
        help="--cold: keep only rounds in which the rest of the machine took under MS ms of CPU during each command",
    )  # fmt: skip
    args = parser.parse_args()
    configure_logging("warning")
    # Every command runs as from an installed package, with bytecode caches allowed: where
    # PYTHONDONTWRITEBYTECODE forbids them, each mcpi command (coordinator and workers)
    # compiles its own sources again on every start, which the one-file executor script
    # hardly pays. The first round of each list below writes them.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    points = args.points
    if args.cold:
        cold_targets(points, args.big, args.rounds, args.compare_load, args.against, args.quiet_only)
        return
    if args.first_run:
        first_run_after_install(points, args.rounds)
        return
    if args.implementations:
        compare_implementations(points, args.rounds)
        return

    contenders: dict[str, Callable[[int], tuple[float, int]]] = {
        "trio-pool x1 (warm)": trio_pool(1),
        "trio-pool x2 (warm)": trio_pool(2),
        "process-pool x2 (warm)": process_pool(2),
        "process-pool/setsid x2 (warm)": process_pool(2, setsid=True),
    }
    if not args.skip_cold:
        contenders["mcpi estimate -w2 (cold)"] = cold_mcpi
        contenders["executor script x2 (cold)"] = cold_executor_script

    print(f"{points:.0e} points, chunks of {DEFAULT_CHUNK_SIZE:.0e}, {args.rounds} rounds; {load()}")
    with_points = {name: functools.partial(run, points) for name, run in contenders.items()}
    times, counts = run_rounds(with_points, args.rounds)
    names = list(contenders)

    median = {name: statistics.median(values) for name, values in times.items()}
    print()
    for name in names:
        print(f"  {name:32} median {median[name]:6.3f} s   ({', '.join(f'{t:.2f}' for t in times[name])})")
    all_counts = set().union(*counts.values())
    print(f"  every contender counted the same inside: {len(all_counts) == 1} ({sorted(all_counts)})")
    print()
    speedup = median["trio-pool x1 (warm)"] / median["trio-pool x2 (warm)"]
    print(f"scaling     1 -> 2 workers (warm):         speed-up {speedup:.2f}   (target >= 1.9)")
    ratio = median["trio-pool x2 (warm)"] / median["process-pool x2 (warm)"]
    print(f"vs executor trio-pool / process-pool (warm): {ratio:.3f}   (target <= 1.0)")
    ratio = median["trio-pool x2 (warm)"] / median["process-pool/setsid x2 (warm)"]
    print(f"vs executor trio-pool / process-pool+setsid (warm): {ratio:.3f}")
    if not args.skip_cold:
        ratio = median["mcpi estimate -w2 (cold)"] / median["executor script x2 (cold)"]
        print(f"vs executor mcpi estimate / executor script (cold, start-up included): {ratio:.3f}")

    print()
    small, small_json = peak_rss_mib(["--points", "1e8", "--workers", "2", "--seed", str(SEED)])
    huge, huge_json = peak_rss_mib(["--points", "1e13", "--max-time", "4", "--workers", "2", "--seed", str(SEED)])
    print(f"memory      coordinator peak RSS: 1e8 points {small:.1f} MiB ({small_json['chunks']} chunks); "
          f"1e13 points stopped after 4 s {huge:.1f} MiB ({huge_json['chunks']} chunks); {load()}")


if __name__ == "__main__":
    main()
