"""What the size hint (protocol.md §5.1) saves one worker: a real ``mcpi-worker`` under the
default ``MCPI_NUMPY_IMPL=auto`` (numba's cache warm), its ``hello`` with and without
``expected_points``, then one range of ``--points`` points (streams of 1e7 points) and end
of input. Interleaved rounds; the worker's CPU time (user + system, from its exit) and the
wall time from start to answer, medians; the counts must agree.

    python benchmarks/hint.py [--points 1e9] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from mcpi_coordinator.arguments import count
from mcpi_worker.protocol import (
    NEED_DATA,
    PROTOCOL_VERSIONS,
    WORKER_MESSAGES,
    FrameDecoder,
    Hello,
    Result,
    Sample,
    encode,
)

STREAM_POINTS = 10_000_000
SEED = 20240611


def one_run(points: int, hint: int | None) -> tuple[float, float, int, str]:
    """(wall s, worker CPU s, inside, the implementation that answered)."""
    environ = {k: v for k, v in os.environ.items() if k != "MCPI_NUMPY_IMPL"}
    started = time.perf_counter()
    worker = subprocess.Popen(
        [sys.executable, "-P", "-m", "mcpi_worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environ,
    )  # fmt: skip
    assert worker.stdin is not None and worker.stdout is not None
    sample = Sample(1, SEED, 0, STREAM_POINTS, "numpy", streams=points // STREAM_POINTS)
    worker.stdin.write(encode(Hello(PROTOCOL_VERSIONS, "benchmarks/hint.py", hint)) + encode(sample))
    worker.stdin.flush()
    decoder = FrameDecoder(WORKER_MESSAGES)
    answers: list[object] = []
    while len(answers) < 2:  # the welcome, then the result
        data = os.read(worker.stdout.fileno(), 65536)
        if not data:
            raise SystemExit("the worker closed its output early")
        decoder.feed(data)
        while (message := decoder.next_message()) is not NEED_DATA:
            answers.append(message)
    wall = time.perf_counter() - started
    worker.stdin.close()
    _, status, usage = os.wait4(worker.pid, 0)
    worker.returncode = os.waitstatus_to_exitcode(status)
    worker.stdout.close()
    result = answers[1]
    if not isinstance(result, Result):
        raise SystemExit(f"the worker answered {result!r}")
    return wall, usage.ru_utime + usage.ru_stime, result.inside, result.implementation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=count, default=10**9)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    points = max(STREAM_POINTS, args.points // STREAM_POINTS * STREAM_POINTS)
    cases = {"no hint": None, "hint": points}
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"one worker, {points:.0e} points in one range; {args.rounds} rounds; load average {load}")
    runs: dict[str, list[tuple[float, float, int, str]]] = {name: [] for name in cases}
    names = list(cases)
    for round_number in range(args.rounds):
        for name in names if round_number % 2 == 0 else names[::-1]:
            runs[name].append(one_run(points, cases[name]))
    for name in names:
        wall = statistics.median(r[0] for r in runs[name])
        cpu = statistics.median(r[1] for r in runs[name])
        each = ", ".join(f"{r[1]:.2f}" for r in runs[name])
        print(f"  {name:8} wall {wall:6.2f} s  worker CPU {cpu:5.2f} s  ({each})")
    cpu_ratio = statistics.median(r[1] for r in runs["hint"]) / statistics.median(r[1] for r in runs["no hint"])
    agree = len({r[2] for rs in runs.values() for r in rs}) == 1
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"  hint / no hint: worker CPU {cpu_ratio:.2f}x; counts agree: {agree}; load average {load}")


if __name__ == "__main__":
    main()
