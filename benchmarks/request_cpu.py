"""CPU per request on mcpi's request path, the coordinator's and the workers', for 0-point samples.

The pool's round trip and throughput (``benchmarks/overhead.py``) move a lot with the
machine's load; the CPU time each side spends per request moves much less, and says
which side a change made cheaper. Each measurement runs in a process of its own: a
``WorkerPool`` of ``--workers`` real ``mcpi-worker`` processes, then ``--requests``
0-point samples, one at a time (``WorkerPool.sample``: the median round trip) and all at
once (``imap_unordered``: the rate), with the CPU time of the coordinator's process
(``RUSAGE_SELF``) and of its workers (psutil) over each part, divided by the requests.

``--against PYTHON`` runs the same measurement with another installation's interpreter
(a worktree of the code before a change, with its own venv), interleaved with ours
round by round, from a neutral directory so that each imports its own code.

    python benchmarks/request_cpu.py [--requests 30000] [--rounds 3] [--workers 2] [--against PYTHON]
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

MODES = ("sequential", "imap_unordered")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(mode: str, requests: int, workers: int) -> dict[str, float]:
    """One measurement in this process (what ``--one`` prints)."""
    import psutil
    import trio

    from mcpi_coordinator.bench.overhead import AS_DEEP_AS_WORKERS_ALLOW, EMPTY_CHUNK
    from mcpi_coordinator.pool.worker_pool import WorkerPool

    async def run() -> dict[str, float]:
        async with WorkerPool(workers, pipeline_depth=AS_DEEP_AS_WORKERS_ALLOW) as pool:
            for _ in range(4 * workers):
                await pool.sample(EMPTY_CHUNK)
            children = psutil.Process().children(recursive=True)

            def workers_cpu_s() -> float:
                return sum(sum(child.cpu_times()[:2]) for child in children)

            own, theirs = _cpu_s(), workers_cpu_s()
            started = time.perf_counter()
            figure: float
            if mode == "sequential":
                trips = []
                for _ in range(requests):
                    begun = time.perf_counter_ns()
                    await pool.sample(EMPTY_CHUNK)
                    trips.append(time.perf_counter_ns() - begun)
                figure = statistics.median(trips) / 1000
            else:
                async with pool.imap_unordered(EMPTY_CHUNK for _ in range(requests)) as results:
                    async for _ in results:
                        pass
                figure = requests / (time.perf_counter() - started)
            return {
                "figure": figure,
                "coordinator_us": (_cpu_s() - own) / requests * 1e6,
                "workers_us": (workers_cpu_s() - theirs) / requests * 1e6,
            }

    return trio.run(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--against", metavar="PYTHON", help="also measure this interpreter's mcpi")
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.requests, args.workers)))
        return
    pythons = {"ours": sys.executable, **({"against": args.against} if args.against else {})}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    print(f"0-point samples, {args.requests} per figure, {args.workers} workers, {args.rounds} rounds")
    print(f"before: load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    for round_index in range(args.rounds):
        order = list(pythons.items())
        if round_index % 2:
            order.reverse()
        for mode in MODES:
            for name, python in order:
                done = subprocess.run(
                    [python, os.path.abspath(__file__), "--one", mode, "--requests", str(args.requests),
                     "--workers", str(args.workers)],
                    capture_output=True, text=True, check=True, env=env, cwd=tempfile.gettempdir(),
                )  # fmt: skip
                found.setdefault((name, mode), []).append(json.loads(done.stdout))
    print("medians of the rounds:")
    for mode in MODES:
        unit = "us round trip" if mode == "sequential" else "requests/s"
        for name in pythons:
            rows = found[(name, mode)]
            figure = statistics.median(r["figure"] for r in rows)
            coordinator = statistics.median(r["coordinator_us"] for r in rows)
            workers = statistics.median(r["workers_us"] for r in rows)
            print(f"  {mode:<15} {name:<8} {figure:>10,.1f} {unit:<14} CPU per request: "
                  f"coordinator {coordinator:6.1f} us, workers {workers:6.1f} us")  # fmt: skip
    print(f"after: load average {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
