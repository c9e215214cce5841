"""How long a ``ping`` and a ``shutdown`` take while mcpi-worker computes the largest range
it accepts (2**20 zero-point streams of the ``python`` kernel, seconds of stream set-up),
beside the same on an idle worker, in the same run.

A blocking client over pipes: each ping's round trip (median, max), then the time from
writing ``shutdown`` to the worker's exit. protocol.md §6 asks for milliseconds.

    python benchmarks/hostile_latency.py [--pings N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from blocking_worker import BlockingWorker

from mcpi_worker.protocol import MAX_STREAMS, Ping, Sample, Shutdown


class Client(BlockingWorker):
    def __init__(self) -> None:
        super().__init__([sys.executable, "-m", "mcpi_worker", "--spin-us", "0"], "hostile-latency", (2,))

    def ping_ms(self, request_id: int) -> float:
        started = time.perf_counter()
        self.send(Ping(request_id))
        while True:  # the range's own answer may come first
            message = self.receive()
            if getattr(message, "id", None) == request_id:
                return (time.perf_counter() - started) * 1e3

    def shutdown_ms(self) -> float:
        started = time.perf_counter()
        self.send(Shutdown())
        self.process.wait()
        return (time.perf_counter() - started) * 1e3


def measure(busy: bool, pings: int) -> tuple[list[float], float]:
    client = Client()
    if busy:
        client.send(Sample(1, 7, 0, 0, "python", streams=MAX_STREAMS, group=MAX_STREAMS))
        time.sleep(0.2)  # let the range start
    rtts = [client.ping_ms(100 + i) for i in range(pings)]
    return rtts, client.shutdown_ms()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pings", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, tuple[list[float], list[float]]] = {"idle": ([], []), "largest range": ([], [])}
    for _ in range(args.runs):
        for name, busy in (("idle", False), ("largest range", True)):
            rtts, shutdown = measure(busy, args.pings)
            rows[name][0].extend(rtts)
            rows[name][1].append(shutdown)
    idle_ping = statistics.median(rows["idle"][0])
    print(f"load {os.getloadavg()[0]:.1f}; {args.runs} runs x {args.pings} pings")
    for name, (rtts, shutdowns) in rows.items():
        ping = statistics.median(rtts)
        print(
            f"{name:>14}: ping median {ping:.3f} ms (x{ping / idle_ping:.2f} idle), max {max(rtts):.3f} ms; "
            f"shutdown to exit median {statistics.median(shutdowns):.1f} ms, max {max(shutdowns):.1f} ms"
        )


if __name__ == "__main__":
    main()
