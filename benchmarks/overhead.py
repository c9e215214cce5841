"""Per-task overhead: mcpi's pool against the pools a Python user would reach for.

Runs ``mcpi bench overhead``'s measurements (mcpi_coordinator.bench.overhead) for every
approach in the same process run, ``--rounds`` times in rotating order, and prints the
medians, the ratios to ProcessPoolExecutor and to the fastest peer, and the targets:

- issue 22: a 0-point ``sample`` round trip <= the fastest peer's round trip, and
  0-point samples per second >= the fastest peer's tasks per second (the peers:
  multiprocessing.Pool's apply_async and imap_unordered, ProcessPoolExecutor, joblib,
  loky, pebble, trio-parallel, anyio);
- issue 4: trio-pool round trip <= 0.5x ProcessPoolExecutor's, throughput >= 3x.

joblib's ``batch_size='auto'`` sends many tiny tasks in one message once it has timed
a few, so its throughput is of batches; the fastest peer is also named without it.
mcpi's batched row, ``trio-pool/range``, is its own way of doing that: the 0-point chunks
given to ``imap_unordered`` as one range of streams, cut into pieces by the dispatcher as
``mcpi estimate``'s small chunks are, each piece one ``sample`` answered with every
stream's count (docs/bench.md says why this is the like-for-like row). It is held
against joblib's batches, the unbatched ``trio-pool/sample`` against the peers sending one
task at a time.

A ``process-pool/setsid`` row runs the executor's workers each in a session of its
own, as mcpi-worker runs: on a loaded Linux box with scheduler autogrouping, CPU is
shared between sessions, which favours workers in sessions of their own (see
benchmarks/approaches.py). Compare throughput against it when the load is high.

``trio-pool`` sends ``ping``, the protocol's cheapest request, through the pool (as
the issue defines it); ``trio-pool/sample`` a 0-point ``sample``, the path real work
takes (every check of the request and of the answer; no generator for no points), with
``imap_unordered`` for throughput.

``--floors`` adds what no pool can beat, measured against one real ``mcpi-worker``:
a blocking client (write a frame, read the answer) and a bare Trio client (one task,
no pool), each with ``ping`` and with a 0-point ``sample``. The gap between the two
clients is Trio's share; between bare Trio and trio-pool, the pool's. Under those, the
same two clients against ``cat`` (a C program echoing the frame back: no Python, no
protocol on the other side): what a pipe round trip to another process costs on this
machine at all, blocking and from Trio.

``--busy N`` runs it all beside N CPU-bound loops, each in a session of its own as another
user's jobs are (``--busy-same-session``: in this one, as jobs from the same shell are;
benchmarks/busy_loops.py), so that a busy machine's figures can be rerun at will.

    python benchmarks/overhead.py [--tasks 3000] [--rounds 5] [--workers 2] [--floors] [--busy N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial

import trio
from busy_loops import add_busy_arguments, busy_loops, described

from mcpi_coordinator.bench import overhead
from mcpi_coordinator.bench.overhead import BATCHED, OVERHEAD_APPROACHES, RANGE_ROW, Overhead
from mcpi_coordinator.cli.logging import configure_logging
from mcpi_coordinator.launch.local import default_worker_command
from mcpi_worker import protocol

REFERENCE = "process-pool"
SAME_FOOTING = "process-pool/setsid"
OURS = ("trio-pool", "trio-pool/sample", RANGE_ROW)

CONTENDERS: dict[str, Callable[[int, int], Overhead]] = {
    **OVERHEAD_APPROACHES,
    SAME_FOOTING: partial(overhead.process_pool, initializer=os.setsid),
}


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


# --------------------------------------------------------------------------- floors


def _requests(kind: str, count: int) -> list[bytes]:
    if kind == "ping":
        return [protocol.encode(protocol.Ping(id=i)) for i in range(1, count + 1)]
    return [
        protocol.encode(protocol.Sample(id=i, seed=0, stream=0, points=0, kernel="numpy"))
        for i in range(1, count + 1)
    ]


def _hello() -> bytes:
    return protocol.encode(protocol.Hello(versions=protocol.PROTOCOL_VERSIONS, client="floor"))


def blocking_client_us(kind: str, tasks: int) -> float:
    """Median round trip of a plain blocking client: os.write a frame, os.read the answer."""
    worker = subprocess.Popen(
        [*default_worker_command(), "--log-level", "warning"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
    )  # fmt: skip
    assert worker.stdin and worker.stdout
    decoder = protocol.FrameDecoder(protocol.WORKER_MESSAGES)

    def answer() -> protocol.Message:
        while (message := decoder.next_message()) is protocol.NEED_DATA:
            decoder.feed(os.read(worker.stdout.fileno(), 65536))  # type: ignore[union-attr]
        return message  # type: ignore[return-value]

    try:
        os.write(worker.stdin.fileno(), _hello())
        answer()
        samples = []
        for frame in _requests(kind, tasks):
            started = time.perf_counter_ns()
            os.write(worker.stdin.fileno(), frame)
            answer()
            samples.append(time.perf_counter_ns() - started)
    finally:
        worker.stdin.close()
        worker.wait(timeout=10)
    return statistics.median(samples) / 1000


def bare_trio_client_us(kind: str, tasks: int) -> float:
    """The same exchange from one Trio task: the floor for any Trio coordinator."""

    async def measure() -> float:
        worker = await trio.lowlevel.open_process(
            [*default_worker_command(), "--log-level", "warning"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert worker.stdin and worker.stdout
        decoder = protocol.FrameDecoder(protocol.WORKER_MESSAGES)

        async def answer() -> None:
            while decoder.next_message() is protocol.NEED_DATA:
                decoder.feed(bytes(await worker.stdout.receive_some(65536)))  # type: ignore[union-attr]

        try:
            await worker.stdin.send_all(_hello())
            await answer()
            samples = []
            for frame in _requests(kind, tasks):
                started = time.perf_counter_ns()
                await worker.stdin.send_all(frame)
                await answer()
                samples.append(time.perf_counter_ns() - started)
        finally:
            await worker.stdin.aclose()
            await worker.wait()
        return statistics.median(samples) / 1000

    return trio.run(measure)


def _echo_frame() -> bytes:
    """A 0-point sample's frame: what the echo floors send, and get back."""
    return _requests("sample", 1)[0]


def blocking_echo_us(tasks: int) -> float:
    """Median round trip of a frame through ``cat`` from a blocking client."""
    frame = _echo_frame()
    echo = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert echo.stdin and echo.stdout
    samples = []
    try:
        for _ in range(tasks):
            started = time.perf_counter_ns()
            os.write(echo.stdin.fileno(), frame)
            back = 0
            while back < len(frame):
                back += len(os.read(echo.stdout.fileno(), 65536))
            samples.append(time.perf_counter_ns() - started)
    finally:
        echo.stdin.close()
        echo.wait(timeout=10)
    return statistics.median(samples) / 1000


def trio_echo_us(tasks: int) -> float:
    """The same through ``cat`` from one Trio task: a Trio process's pipe round trip."""
    frame = _echo_frame()

    async def measure() -> float:
        echo = await trio.lowlevel.open_process(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert echo.stdin and echo.stdout
        samples = []
        try:
            for _ in range(tasks):
                started = time.perf_counter_ns()
                await echo.stdin.send_all(frame)
                back = 0
                while back < len(frame):
                    back += len(await echo.stdout.receive_some(65536))
                samples.append(time.perf_counter_ns() - started)
        finally:
            await echo.stdin.aclose()
            await echo.wait()
        return statistics.median(samples) / 1000

    return trio.run(measure)


# --------------------------------------------------------------------------- main

def _print_issue_22_targets(medians: dict[str, tuple[float, float]], peers: dict[str, tuple[float, float]]) -> None:
    """Each of our 0-point rows against the peers of its kind (one task at a time, or
    batched), then the issue's "top of both columns": our best against every peer's."""
    unbatched = {n: m for n, m in peers.items() if n not in BATCHED}
    batched = {n: m for n, m in peers.items() if n in BATCHED}
    sample = "trio-pool/sample"
    if sample in medians:
        rt, tp = medians[sample]
        print(f"\ntargets (issue 22), {sample} (one task at a time):")
        _beside("round trip <= the fastest peer's", rt, peers, 0)
        _beside("tasks/s >= every peer sending one task at a time's", tp, unbatched, 1)
    if RANGE_ROW in medians:
        print(f"\ntargets (issue 22), {RANGE_ROW} (batched):")
        _beside("tasks/s >= every batching peer's", medians[RANGE_ROW][1], batched, 1)
    ours = {n: medians[n] for n in (sample, RANGE_ROW) if n in medians}
    if ours:
        print("\nissue 22, done when: mcpi at the top of both columns (its best 0-point row in each)")
        for column, label in ((0, "round trip"), (1, "tasks/s")):
            best = (min if column == 0 else max)(ours, key=lambda n: ours[n][column])
            _beside(f"{label}, {best}", ours[best][column], peers, column)


def _beside(label: str, ours: float, peers: dict[str, tuple[float, float]], column: int) -> None:
    """One target line: ``ours`` against the best of ``peers`` in ``column`` (0: round
    trip, lower is better; 1: tasks/s, higher is better)."""
    if not peers:
        return
    best = (min if column == 0 else max)(peers, key=lambda n: peers[n][column])
    theirs = peers[best][column]
    met = ours <= theirs if column == 0 else ours >= theirs
    shown = (lambda v: f"{v:.1f} us") if column == 0 else (lambda v: f"{v:,.0f}/s")
    print(f"  {label}: {best} {shown(theirs)}, ours {shown(ours)}, {ours / theirs:.2f}x  {_verdict(met)}")



def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--floors", action="store_true", help="also measure the single-worker floors")
    add_busy_arguments(parser)
    args = parser.parse_args()
    configure_logging()
    with busy_loops(args.busy, same_session=args.busy_same_session):
        _measure(args)


def _measure(args: argparse.Namespace) -> None:
    print(f"overhead: {args.tasks} no-op tasks per figure, {args.workers} workers, {args.rounds} rounds")
    print(f"  {described(args.busy, same_session=args.busy_same_session)}")
    print(f"before: {load()}")
    names = list(CONTENDERS)
    figures: dict[str, list[Overhead]] = defaultdict(list)
    for round_index in range(args.rounds):
        # Rotate the order so no approach always runs first (cold caches) or last.
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            result = CONTENDERS[name](args.tasks, args.workers)
            figures[name].append(result)
            if result.unavailable:
                print(f"  round {round_index + 1} {name:<22} unavailable: {result.unavailable}")
            else:
                print(
                    f"  round {round_index + 1} {name:<22} {result.round_trip_us:8.1f} us"
                    f" {result.tasks_per_s:10,.0f} tasks/s",
                    flush=True,
                )

    medians: dict[str, tuple[float, float]] = {}
    for name in names:
        pairs = [(r.round_trip_us, r.tasks_per_s) for r in figures[name]]
        measured = [(rt, tp) for rt, tp in pairs if rt is not None and tp is not None]
        if measured:
            medians[name] = (
                statistics.median(rt for rt, _ in measured),
                statistics.median(tp for _, tp in measured),
            )
    print(f"\nmedians over {args.rounds} rounds:")
    reference_rt, reference_tp = medians.get(REFERENCE, (float("nan"), float("nan")))
    print(f"  {'approach':<27} {'round trip':>12} {'x ' + REFERENCE:>16} {'tasks/s':>10} {'x ' + REFERENCE:>16}")
    for name, (rt, tp) in medians.items():
        label = f"{name} (batched)" if name in BATCHED else name
        print(f"  {label:<27} {rt:9.1f} us {rt / reference_rt:15.2f}x {tp:10,.0f} {tp / reference_tp:15.2f}x")

    peers = {n: m for n, m in medians.items() if n not in OURS}
    if peers:
        _print_issue_22_targets(medians, peers)
    for ours in ("trio-pool", "trio-pool/sample"):  # issue 4's rows: one task per message
        if ours not in medians or REFERENCE not in medians:
            continue
        rt, tp = medians[ours]
        print(f"\ntargets (issue 4), {ours}:")
        print(f"  round trip <= 0.5x {REFERENCE}: {rt / reference_rt:.2f}x  {_verdict(rt <= 0.5 * reference_rt)}")
        print(f"  throughput >= 3x {REFERENCE}: {tp / reference_tp:.2f}x  {_verdict(tp >= 3 * reference_tp)}")
        if SAME_FOOTING in medians:
            footing_tp = medians[SAME_FOOTING][1]
            print(f"    (against {SAME_FOOTING}: {tp / footing_tp:.2f}x)")

    if args.floors:
        print("\nfloors against one mcpi-worker (median round trip, medians of rounds):")
        floor_runs: dict[str, Callable[[str, int], float]] = {
            "blocking client": blocking_client_us,
            "bare trio client": bare_trio_client_us,
        }
        for label, measure in floor_runs.items():
            for kind in ("ping", "sample"):
                values = [measure(kind, args.tasks) for _ in range(args.rounds)]
                what = "ping" if kind == "ping" else "0-point sample"
                print(f"  {label:<17} {what:<15} {statistics.median(values):8.1f} us")
        print("floors against cat, a C echo (median round trip of a 0-point sample's frame, medians of rounds):")
        echo_runs: dict[str, Callable[[int], float]] = {
            "blocking client": blocking_echo_us,
            "bare trio client": trio_echo_us,
        }
        for label, echo_measure in echo_runs.items():
            values = [echo_measure(args.tasks) for _ in range(args.rounds)]
            print(f"  {label:<17} {'echo':<15} {statistics.median(values):8.1f} us")
    print(f"\nafter: {load()}")


if __name__ == "__main__":
    main()
