"""CPU per request on mcpi's request path, the coordinator's and the workers', for 0-point chunks.

The pool's round trip and throughput (``benchmarks/overhead.py``) move a lot with the
machine's load; the CPU time each side spends per request moves much less, and says
which side a change made cheaper. Each measurement runs in a process of its own: a
``WorkerPool`` of ``--workers`` real ``mcpi-worker`` processes, then ``--requests``
0-point samples, one at a time (``WorkerPool.sample``: the median round trip) and all at
once (``imap_unordered``: the rate), and ``--range-chunks`` 0-point chunks in ranges of
``--range-size`` (``range``: ``imap_unordered`` of ``Chunk(streams=range_size)``, which
the pool cuts into pieces, as ``mcpi bench overhead``'s batched row sends them: chunks a
second; far more of them, as they cost far less), with the CPU time of the coordinator's
process (``RUSAGE_SELF``) and of its workers (psutil) over each part, divided by the
requests (for ``range``, by the chunks).

``--against PYTHON`` runs the same measurement with another installation's interpreter
(a worktree of the code before a change, with its own venv), interleaved with ours
round by round, from a neutral directory so that each imports its own code.

``--mp-pool`` adds the same two measurements of ``multiprocessing.Pool`` with a no-op
task (``apply_async(...).get()`` one at a time, and ``imap_unordered``), its parent's CPU
and its workers' per task: on a machine whose cores are all busy, the CPU both sides
spend per request is what bounds how many requests a second go through.

Beside the CPU, the context switches per request of each side, voluntary (a thread went
to sleep: a wait for the other side) and involuntary (it was preempted), summed over
every thread of the process (``/proc/PID/task/*/status``): how many sleeps and wake-ups
one round trip costs. ``--busy N`` runs it all beside N CPU-bound loops
(``benchmarks/busy_loops.py``), as ``overhead.py --busy N`` does.

    python benchmarks/request_cpu.py [--requests 30000] [--rounds 3] [--workers 2] [--against PYTHON] [--mp-pool]
                                     [--range-chunks 1000000] [--range-size 2000] [--busy N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from busy_loops import add_busy_arguments, busy_loops, described

MODES = ("sequential", "imap_unordered", "range")
MP_MODES = ("sequential", "imap_unordered")
"""``multiprocessing.Pool`` has no ``range`` row: its batches are ``chunksize``, another
question (``benchmarks/overhead.py`` holds the batched rows against joblib's)."""


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of every thread of ``pid`` so far (one
    that ended meanwhile is left out: the figures are of the threads that serve)."""
    voluntary = involuntary = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        involuntary += int(line.split()[1])
        except FileNotFoundError:
            pass
    return voluntary, involuntary


class _CpuSince:
    """CPU spent, and context switches made, from now on by this process and by its
    children of now (the workers)."""

    def __init__(self) -> None:
        import psutil

        self._children = psutil.Process().children(recursive=True)
        self._own, self._theirs = _cpu_s(), self._workers_cpu_s()
        self._own_switches, self._their_switches = _switches(os.getpid()), self._workers_switches()

    def _workers_cpu_s(self) -> float:
        return sum(sum(child.cpu_times()[:2]) for child in self._children)

    def _workers_switches(self) -> tuple[int, int]:
        each = [_switches(child.pid) for child in self._children]
        return sum(v for v, _ in each), sum(i for _, i in each)

    def per_request(self, figure: float, requests: int) -> dict[str, float]:
        own, theirs = _switches(os.getpid()), self._workers_switches()
        return {
            "figure": figure,
            "coordinator_us": (_cpu_s() - self._own) / requests * 1e6,
            "workers_us": (self._workers_cpu_s() - self._theirs) / requests * 1e6,
            "coordinator_voluntary": (own[0] - self._own_switches[0]) / requests,
            "coordinator_involuntary": (own[1] - self._own_switches[1]) / requests,
            "workers_voluntary": (theirs[0] - self._their_switches[0]) / requests,
            "workers_involuntary": (theirs[1] - self._their_switches[1]) / requests,
        }


def measure(mode: str, requests: int, workers: int, range_size: int = 2000) -> dict[str, float]:
    """One measurement in this process (what ``--one`` prints)."""
    from dataclasses import replace

    import trio

    from mcpi_coordinator.bench.overhead import AS_DEEP_AS_WORKERS_ALLOW, EMPTY_CHUNK
    from mcpi_coordinator.pool.worker_pool import WorkerPool

    async def run() -> dict[str, float]:
        async with WorkerPool(workers, pipeline_depth=AS_DEEP_AS_WORKERS_ALLOW) as pool:
            for _ in range(4 * workers):
                await pool.sample(EMPTY_CHUNK)
            spent = _CpuSince()
            started = time.perf_counter()
            figure: float
            if mode == "sequential":
                trips = []
                for _ in range(requests):
                    begun = time.perf_counter_ns()
                    await pool.sample(EMPTY_CHUNK)
                    trips.append(time.perf_counter_ns() - begun)
                figure = statistics.median(trips) / 1000
            elif mode == "imap_unordered":
                async with pool.imap_unordered(EMPTY_CHUNK for _ in range(requests)) as results:
                    async for _ in results:
                        pass
                figure = requests / (time.perf_counter() - started)
            else:
                chunks = 0
                for first in range(0, requests, range_size):
                    streams = min(range_size, requests - first)
                    work = [replace(EMPTY_CHUNK, stream=first, streams=streams)]
                    async with pool.imap_unordered(work) as results:
                        async for result in results:
                            chunks += len(result.stream_counts)
                figure = requests / (time.perf_counter() - started)
                if chunks != requests:
                    raise RuntimeError(f"{requests} chunks came back as {chunks} counts")
            return spent.per_request(figure, requests)

    return trio.run(run)


def measure_mp_pool(mode: str, requests: int, workers: int) -> dict[str, float]:
    """The same measurement of ``multiprocessing.Pool`` with a no-op task."""
    import multiprocessing

    from mcpi_coordinator.bench import tasks

    with multiprocessing.Pool(workers, initializer=tasks.initializer()) as pool:
        for _ in pool.imap_unordered(tasks.noop_of, range(4 * workers)):
            pass
        spent = _CpuSince()
        started = time.perf_counter()
        figure: float
        if mode == "sequential":
            trips = []
            for _ in range(requests):
                begun = time.perf_counter_ns()
                pool.apply_async(tasks.noop).get()
                trips.append(time.perf_counter_ns() - begun)
            figure = statistics.median(trips) / 1000
        else:
            for _ in pool.imap_unordered(tasks.noop_of, range(requests)):
                pass
            figure = requests / (time.perf_counter() - started)
        result = spent.per_request(figure, requests)
        pool.close()  # not terminate(): see mcpi_coordinator.bench.overhead._close_gracefully
        pool.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--against", metavar="PYTHON", help="also measure this interpreter's mcpi")
    parser.add_argument("--mp-pool", action="store_true", help="also measure multiprocessing.Pool")
    parser.add_argument("--range-chunks", type=int, default=1_000_000, help="0-point chunks of the range figure")
    parser.add_argument("--range-size", type=int, default=2000, help="chunks per range of the range figure")
    add_busy_arguments(parser)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--mp-one", choices=MP_MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.requests, args.workers, args.range_size)))
        return
    if args.mp_one:
        print(json.dumps(measure_mp_pool(args.mp_one, args.requests, args.workers)))
        return
    with busy_loops(args.busy, same_session=args.busy_same_session):
        _compare(args)


def _compare(args: argparse.Namespace) -> None:
    pythons = {"ours": sys.executable, **({"against": args.against} if args.against else {})}
    if args.mp_pool:
        pythons["mp-pool"] = sys.executable
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    print(
        f"0-point chunks, {args.requests} per figure ({args.range_chunks} in ranges of {args.range_size} for the"
        f" range figure), {args.workers} workers, {args.rounds} rounds"
    )
    print(f"  {described(args.busy, same_session=args.busy_same_session)}")
    print(f"before: load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    for round_index in range(args.rounds):
        order = list(pythons.items())
        if round_index % 2:
            order.reverse()
        for mode in MODES:
            for name, python in order:
                if name == "mp-pool" and mode not in MP_MODES:
                    continue
                which = "--mp-one" if name == "mp-pool" else "--one"
                count = args.range_chunks if mode == "range" else args.requests
                done = subprocess.run(
                    [python, os.path.abspath(__file__), which, mode, "--requests", str(count),
                     "--workers", str(args.workers), "--range-size", str(args.range_size)],
                    capture_output=True, text=True, check=True, env=env, cwd=tempfile.gettempdir(),
                )  # fmt: skip
                found.setdefault((name, mode), []).append(json.loads(done.stdout))
    print("medians of the rounds:")
    for mode in MODES:
        unit = {"sequential": "us round trip", "imap_unordered": "requests/s", "range": "chunks/s"}[mode]
        for name in pythons:
            if (name, mode) not in found:
                continue
            rows = found[(name, mode)]
            figure = statistics.median(r["figure"] for r in rows)
            coordinator = statistics.median(r["coordinator_us"] for r in rows)
            workers = statistics.median(r["workers_us"] for r in rows)
            side = "parent" if name == "mp-pool" else "coordinator"
            vol, invol, wvol, winvol = (
                statistics.median(r[key] for r in rows)
                for key in (
                    "coordinator_voluntary", "coordinator_involuntary", "workers_voluntary", "workers_involuntary"
                )
            )
            print(f"  {mode:<15} {name:<8} {figure:>10,.1f} {unit:<14} CPU per request: "
                  f"{side} {coordinator:6.2f} us, workers {workers:6.2f} us; switches (voluntary/involuntary): "
                  f"{side} {vol:.2f}/{invol:.2f}, workers {wvol:.2f}/{winvol:.2f}")  # fmt: skip
    print(f"after: load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
