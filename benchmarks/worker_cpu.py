"""What one real ``mcpi-worker`` spends beside its counting, thread by thread.

On two cores, two workers are bounded by the CPU time of all the processes over two:
whatever a worker spends that is not its kernel (starting, importing, loading the kernel,
threads of its own or of a library) is taken from the other worker's count. This script
starts a worker as ``mcpi estimate`` does (``python -P -m mcpi_worker``, the default
``MCPI_NUMPY_IMPL=auto``, our object cache and numba's cache warm), says ``hello`` with
the size hint and sends one range of ``--points`` points (streams of 1e7 points, as the
default chunk size) in the same write, and reads its answer. Then it reads each of the
worker's threads' CPU time (``/proc/PID/task``) and, after end of input, the whole
process's (``wait4``: threads that ended included). Beside it, the same range counted in
this process by the loaded kernel (``choice.load_fused``): the counting's own CPU time.
What the worker spent beside the counting is the difference.

With ``--against PYTHON`` the same worker from another installation (another venv's
interpreter) runs in the same rounds, interleaved, and the ratio of the two is printed.
Medians of ``--rounds``; the counts must agree. A quiet machine gives the truest
figures: under load, CPU times grow with cache and scheduler contention.

    python benchmarks/worker_cpu.py [--points 1e10] [--rounds 5] [--against /path/to/python]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from blocking_worker import BlockingWorker

from mcpi_coordinator.arguments import count
from mcpi_worker.kernels.choice import load_fused
from mcpi_worker.protocol import PROTOCOL_VERSIONS, Result, Sample

STREAM_POINTS = 10_000_000
SEED = 20240611
WARM_NOW = "from mcpi_worker.kernels.warm import main; main(niceness=0, wait=True)"


def thread_cpu(pid: int) -> list[float]:
    """CPU seconds of each live thread of ``pid``, the main thread first."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = []
    for task in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        with open(f"/proc/{pid}/task/{task}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        seconds.append((int(fields[11]) + int(fields[12])) / tick)
    return seconds


def one_run(python: str, points: int) -> tuple[float, list[float], int]:
    """(the worker's CPU seconds, its live threads' CPU seconds, inside)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("MCPI_NUMPY_IMPL", "PYTHONDONTWRITEBYTECODE")}
    sample = Sample(1, SEED, 0, STREAM_POINTS, "numpy", streams=points // STREAM_POINTS)
    worker = BlockingWorker(
        [python, "-P", "-m", "mcpi_worker"], "benchmarks/worker_cpu.py", PROTOCOL_VERSIONS,
        expected_points=points, then=[sample], env=environ,
    )  # fmt: skip
    result = worker.receive()
    threads = thread_cpu(worker.process.pid)
    worker.process.stdin.close()  # type: ignore[union-attr]
    _, status, usage = os.wait4(worker.process.pid, 0)
    worker.process.returncode = os.waitstatus_to_exitcode(status)
    worker.process.stdout.close()  # type: ignore[union-attr]
    if not isinstance(result, Result):
        raise SystemExit(f"the worker answered {result!r}")
    return usage.ru_utime + usage.ru_stime, threads, result.inside


def counting_cpu(points: int) -> tuple[float, int]:
    """CPU seconds of this process counting the range with the loaded fused kernel."""
    loaded = load_fused()
    started = time.process_time()
    inside = sum(loaded.count_streams(SEED, 0, points // STREAM_POINTS, STREAM_POINTS, lambda: False))
    return time.process_time() - started, inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=count, default=10**10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", metavar="PYTHON", help="another installation's interpreter, run alike")
    args = parser.parse_args()
    points = max(STREAM_POINTS, args.points // STREAM_POINTS * STREAM_POINTS)
    pythons = {"this": sys.executable} | ({"against": args.against} if args.against else {})
    for python in pythons.values():
        subprocess.run([python, "-P", "-c", WARM_NOW], check=True)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"one worker, {points:.0e} points in one range, hinted; {args.rounds} rounds; load average {load}")
    runs: dict[str, list[tuple[float, list[float], int]]] = {name: [] for name in pythons}
    counting: list[float] = []
    insides = set()
    names = list(pythons)
    for round_number in range(args.rounds):
        for name in names if round_number % 2 == 0 else names[::-1]:
            runs[name].append(one_run(pythons[name], points))
        seconds, inside = counting_cpu(points)
        counting.append(seconds)
        insides.add(inside)
    count_s = statistics.median(counting)
    print(f"  counting alone (in this process)  {count_s:6.3f} s CPU")
    beside = {}
    for name in names:
        total = statistics.median(r[0] for r in runs[name])
        beside[name] = total - count_s
        threads = max(len(r[1]) for r in runs[name])
        per_thread = [statistics.median(r[1][i] if i < len(r[1]) else 0.0 for r in runs[name]) for i in range(threads)]
        shown = ", ".join(f"{s:.2f}" for s in per_thread)
        print(
            f"  worker ({name:7}) {total:6.3f} s CPU, {beside[name]:6.3f} s beside the counting; "
            f"live threads at the end: {threads} ({shown} s, the main first)"
        )
        insides.update(r[2] for r in runs[name])
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    if "against" in beside:
        print(f"  beside the counting, this / against: {beside['this']:.3f} / {beside['against']:.3f} s")
    print(f"  counts agree: {len(insides) == 1}; load average {load}")


if __name__ == "__main__":
    main()
