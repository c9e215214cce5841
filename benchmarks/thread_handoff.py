"""What a worker's reader-thread → compute-thread hand-off costs, on this machine.

mcpi-worker answers ``ping`` on the thread that read it. A ``sample`` larger than
``INLINE_MAX_POINTS`` goes to its compute thread (so that cancel, ping and EOF are
still read while a kernel runs); one of at most that many points that finds the
worker idle is computed by the reader itself, because the hand-off would cost more
than the kernel. This measures the hand-off in bare Python, with no mcpi code at
all, beside the worker's own figures from a blocking client: ``ping``, a 0-point
sample, and samples just at and just over the inline limit (same kernel time, one
hand-off apart).

    python benchmarks/thread_handoff.py [--requests N]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from blocking_worker import BlockingWorker

from mcpi_worker.protocol import Ping, Sample, encode
from mcpi_worker.server import INLINE_MAX_POINTS


def bare_handoff_us(requests: int) -> float:
    """Median round trip: main thread queues an item and notifies; the other thread
    wakes, takes it and answers through a pipe (as the worker's compute loop does)."""
    lock = threading.Lock()
    wake = threading.Condition(lock)
    queue: deque[int | None] = deque()
    answer_r, answer_w = os.pipe()

    def compute() -> None:
        while True:
            with lock:
                while not queue:
                    wake.wait()
                item = queue.popleft()
            if item is None:
                return
            os.write(answer_w, b"x")

    thread = threading.Thread(target=compute)
    thread.start()
    times = []
    for i in range(requests):
        start = time.perf_counter()
        with lock:
            queue.append(i)
            wake.notify()
        os.read(answer_r, 1)
        times.append(time.perf_counter() - start)
    with lock:
        queue.append(None)
        wake.notify()
    thread.join()
    os.close(answer_r)
    os.close(answer_w)
    return statistics.median(times) * 1e6


def worker_round_trips_us(requests: int) -> dict[str, float]:
    """Median round trips of a blocking client to one real mcpi-worker."""
    worker = BlockingWorker(
        [sys.executable, "-m", "mcpi_worker", "--log-level", "warning"], "thread_handoff", (1,), stderr=None
    )

    def round_trip(frame: bytes) -> float:
        start = time.perf_counter()
        worker.write(frame)
        worker.receive()
        return time.perf_counter() - start

    ids = itertools.count(1)

    def median_us(make: Callable[[int], bytes]) -> float:
        return statistics.median(round_trip(make(next(ids))) for _ in range(requests))

    figures = {
        "ping": median_us(lambda i: encode(Ping(i))),
        "0-point sample": median_us(lambda i: encode(Sample(i, 1, i, 0, "numpy"))),
        "inline limit": median_us(lambda i: encode(Sample(i, 1, i, INLINE_MAX_POINTS, "numpy"))),
        "limit + 1": median_us(lambda i: encode(Sample(i, 1, i, INLINE_MAX_POINTS + 1, "numpy"))),
    }
    worker.close()
    return {name: seconds * 1e6 for name, seconds in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="round trips per figure")
    args = parser.parse_args()
    handoff = bare_handoff_us(args.requests)
    worker = worker_round_trips_us(args.requests)
    print(f"bare Python thread hand-off + pipe answer   {handoff:7.1f} us")
    for name, micros in worker.items():
        print(f"mcpi-worker, blocking client, {name:15s}{micros:7.1f} us")
    extra = worker["limit + 1"] - worker["inline limit"]
    print(f"limit + 1 - inline limit (the worker's hand-off) {extra:7.1f} us, "
          f"{extra / handoff:.2f}x the bare hand-off")
    print("load average {:.2f} / {:.2f} / {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
