"""What the size hint (protocol.md §5.1) saves one worker: a real ``mcpi-worker`` under the
default ``MCPI_NUMPY_IMPL=auto`` (numba's cache and our object cache warm: this script runs
``mcpi_worker.kernels.warm`` first, at its own priority), its ``hello`` with and without
``expected_points``, then one range of ``--points`` points (streams of 1e7 points) and end
of input; and the hinted run once more with ``MCPI_OBJECT_CACHE=off``, the fused kernels
loaded through ``import numba`` as before the object cache (``kernels/native.py``).
Interleaved rounds; the worker's CPU time (user + system, from its exit), the wall time
from start to answer and the worker's own ``load_s`` (its log), medians; the counts must
agree. Below 1e8 points (2e7 with the object cache) a hint loads nothing, and no hint loads
once 2e8 points (2e7) were counted with NumPy (``kernels/choice.py``).

    python benchmarks/hint.py [--points 1e9] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from blocking_worker import BlockingWorker

from mcpi_coordinator.arguments import count
from mcpi_worker.protocol import PROTOCOL_VERSIONS, Result, Sample

STREAM_POINTS = 10_000_000
SEED = 20240611


WARM_NOW = "from mcpi_worker.kernels.warm import main; main(niceness=0, wait=True)"
"""numba's cache and our object cache warm before any timing, at this priority (waiting
for a warming process already at work)."""


def one_run(points: int, hint: int | None, object_cache: bool = True) -> tuple[float, float, int, str, float | None]:
    """(wall s, worker CPU s, inside, the implementation that answered, its load_s)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("MCPI_NUMPY_IMPL", "MCPI_OBJECT_CACHE")}
    if not object_cache:
        environ["MCPI_OBJECT_CACHE"] = "off"
    started = time.perf_counter()
    sample = Sample(1, SEED, 0, STREAM_POINTS, "numpy", streams=points // STREAM_POINTS)
    worker = BlockingWorker(
        [sys.executable, "-P", "-m", "mcpi_worker"], "benchmarks/hint.py", PROTOCOL_VERSIONS,
        subprocess.PIPE, expected_points=hint, then=[sample], env=environ,
    )  # fmt: skip
    result = worker.receive()
    wall = time.perf_counter() - started
    process = worker.process
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    process.stdin.close()
    stderr = process.stderr.read().decode()  # a few log lines: read after the answer
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stdout.close()
    process.stderr.close()
    if not isinstance(result, Result):
        raise SystemExit(f"the worker answered {result!r}")
    return wall, usage.ru_utime + usage.ru_stime, result.inside, result.implementation, load_s(stderr)


def load_s(stderr: str) -> float | None:
    """The worker's ``load_s`` for the fused kernels (None: it did not load them)."""
    for line in stderr.splitlines():
        if line.startswith("{") and (entry := json.loads(line)).get("event") == "numpy_kernel_implementation":
            return float(entry["load_s"])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=count, default=10**9)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    points = max(STREAM_POINTS, args.points // STREAM_POINTS * STREAM_POINTS)
    subprocess.run([sys.executable, "-P", "-c", WARM_NOW], check=True)
    cases = {"no hint": (None, True), "hint": (points, True), "hint, numba": (points, False)}
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"one worker, {points:.0e} points in one range; {args.rounds} rounds; load average {load}")
    runs: dict[str, list[tuple[float, float, int, str, float | None]]] = {name: [] for name in cases}
    names = list(cases)
    for round_number in range(args.rounds):
        for name in names if round_number % 2 == 0 else names[::-1]:
            runs[name].append(one_run(points, *cases[name]))
    wall, cpu = {}, {}
    for name in names:
        wall[name] = statistics.median(r[0] for r in runs[name])
        cpu[name] = statistics.median(r[1] for r in runs[name])
        each = ", ".join(f"{r[1]:.2f}" for r in runs[name])
        loads = [r[4] for r in runs[name] if r[4] is not None]
        loaded = f"load_s {statistics.median(loads):.3f}" if loads else "no load"
        print(f"  {name:12} wall {wall[name]:6.2f} s  worker CPU {cpu[name]:5.2f} s  {loaded:13} (CPU {each})")
    agree = len({r[2] for rs in runs.values() for r in rs}) == 1
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    hinted = f"worker CPU {cpu['hint'] / cpu['no hint']:.2f}x, wall {wall['hint'] / wall['no hint']:.2f}x"
    print(f"  hint / no hint: {hinted}")
    print(
        f"  object cache / numba load (both hinted): worker CPU {cpu['hint'] / cpu['hint, numba']:.2f}x, "
        f"wall {wall['hint'] / wall['hint, numba']:.2f}x; counts agree: {agree}; load average {load}"
    )


if __name__ == "__main__":
    main()
