"""How far one coordinator goes: simulated fleets of hosts × jobs, measured.

    python benchmarks/scale.py [--hosts 10,100,1000] [--jobs 64] [--chunk-sizes 1e5,1e7,1e9]
                               [--rate 6e8] [--requests 20000]

Each host is an in-process fake worker (``mcpi_coordinator.testing``) speaking protocol
version 2 with ``--jobs`` jobs, each job counting at ``--rate`` points per second (a
fused-kernel core on this machine), answering with made-up counts so no kernel runs: all
the CPU the process spends is the coordinator's and the fakes' protocol work. Time is
Trio's mock clock, so a fleet of 64,000 cores "computes" without anyone waiting, and the
numbers do not depend on the machine's load.

For each fleet and chunk size, one run of ``imap_unordered`` over a range of streams
(what ``mcpi estimate`` sends), from the end of a warm-up (the first pipeline's worth of
requests a host, sent before its speed is known, consumed) until the fakes have sent
``--requests`` more answers (looked at every ``CHECK_EVERY`` results consumed):

- **CPU per request**: the process's CPU time over that window, divided by the answers
  the fakes sent (and the pool received) in it, not by the results the loop consumed:
  a consumer that lags consumes in the window results answered before it (they wait in
  the batch's ready queue), whose CPU was spent before the window, and dividing by them
  gave too low a figure. It includes the fakes' side of each exchange, so it is an upper
  bound on the coordinator's own.
- **work per request**: the mean points of the answers received in the window (pieces
  are sized from each worker's answers to carry ~0.25 s of work; a chunk larger than
  that is one request) and the seconds of one core that is.
- **cores one coordinator keeps busy** = seconds of work per request ÷ CPU seconds per
  request: each request keeps one core busy for its work and costs the coordinator its
  CPU, so this many cores saturate one coordinator core.
- **memory**: the process's peak RSS growth over the run, per host.

The ratio printed last compares the pool with adaptive ranges against the same fleet
fed one stream per request (the protocol-version-1 way), at the smallest chunk size.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcpi_coordinator.arguments import count
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import DEFAULT_PIPELINE_DEPTH, WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import FakeLauncher, fake_launcher

SEED = 2026
CHECK_EVERY = 100
"""Results consumed between two looks at the answers sent (a look reads every fake)."""


@dataclass(frozen=True)
class Row:
    hosts: int
    jobs: int
    chunk_size: int
    versions: tuple[int, ...]
    requests: int
    cpu_us_per_request: float
    points_per_request: float
    work_s_per_request: float
    cores_busy: float
    rss_kib_per_host: float
    simulated_s: float


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _received(launcher: FakeLauncher, pool: WorkerPool) -> tuple[int, int]:
    """Answers the fakes have sent so far, and the points the pool has counted from them
    (``PoolStats``: recorded as each answer is read, whether or not it was consumed)."""
    answers = sum(fake.stats.results_sent for fake in launcher.alive())
    return answers, sum(worker.points for worker in pool.stats.workers)


async def _run(hosts: int, jobs: int, chunk_size: int, rate: float, requests: int, versions: tuple[int, ...]) -> Row:
    behaviour = FakeBehaviour(
        jobs=jobs, points_per_s=rate, made_up_counts=True, max_inflight=4 * jobs, versions=versions
    )
    rss_before = _rss_kib()
    async with trio.open_nursery() as nursery:
        launcher = fake_launcher(nursery, behaviour)
        async with WorkerPool(hosts, launcher=launcher, startup_timeout=1e6) as pool:
            # A range far longer than the run: the pool cuts it into pieces for each worker.
            streams = 10**15 // chunk_size
            # The first pieces go out before any worker's speed is known (a pipeline's
            # worth a host): the steady state is measured after them.
            warmup = hosts * min(DEFAULT_PIPELINE_DEPTH * jobs, behaviour.max_inflight)
            consumed = seen = 0  # results, counted from the end of the warm-up
            started: tuple[int, int] = (0, 0)
            started_cpu, started_clock = _cpu(), trio.current_time()
            async with pool.imap_unordered([Chunk(SEED, 0, chunk_size, streams=streams)]) as results:
                async for _ in results:
                    seen += 1
                    if seen == warmup:
                        started = _received(launcher, pool)
                        started_cpu, started_clock = _cpu(), trio.current_time()
                    if seen <= warmup:
                        continue
                    consumed += 1
                    if consumed % CHECK_EVERY == 0 and _received(launcher, pool)[0] - started[0] >= requests:
                        break
                cpu = _cpu() - started_cpu
                ended = _received(launcher, pool)
            simulated = trio.current_time() - started_clock
        nursery.cancel_scope.cancel()
    answered, points = ended[0] - started[0], ended[1] - started[1]
    cpu_per_request = cpu / answered
    points_per_request = points / answered
    work_s = points_per_request / rate
    return Row(
        hosts=hosts,
        jobs=jobs,
        chunk_size=chunk_size,
        versions=versions,
        requests=answered,
        cpu_us_per_request=cpu_per_request * 1e6,
        points_per_request=points_per_request,
        work_s_per_request=work_s,
        cores_busy=work_s / cpu_per_request,
        rss_kib_per_host=max(0, _rss_kib() - rss_before) / hosts,
        simulated_s=simulated,
    )


def measure(hosts: int, jobs: int, chunk_size: int, rate: float, requests: int, versions: tuple[int, ...]) -> Row:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(_run, hosts, jobs, chunk_size, rate, requests, versions, clock=clock)


def _raise_fd_limit(hosts: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 8 * hosts + 256))  # each fake holds 6 pipe ends and more
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _sizes(text: str) -> list[int]:
    return [count(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=_sizes, default=[10, 100, 1000])
    parser.add_argument("--jobs", type=count, default=64)
    parser.add_argument("--chunk-sizes", type=_sizes, default=[10**5, 10**7, 10**9])
    parser.add_argument("--rate", type=float, default=6e8, help="points per second per job (6e8: a fused core)")
    parser.add_argument("--requests", type=count, default=20_000)
    args = parser.parse_args()
    _raise_fd_limit(max(args.hosts))
    print(f"load average {' / '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}; mock clock")
    header = (
        f"{'hosts':>6} {'jobs':>5} {'chunk':>8} {'v':>3} {'requests':>9} {'CPU/req':>9} "
        f"{'points/req':>11} {'work/req':>9} {'cores busy':>11} {'RSS/host':>9}"
    )
    print(header)
    rows = []
    for hosts in args.hosts:
        for chunk_size in args.chunk_sizes:
            wall = time.perf_counter()
            row = measure(hosts, args.jobs, chunk_size, args.rate, args.requests, (1, 2))
            rows.append(row)
            print(
                f"{row.hosts:>6} {row.jobs:>5} {row.chunk_size:>8.0e} {2:>3} {row.requests:>9} "
                f"{row.cpu_us_per_request:>7.1f}us {row.points_per_request:>11.3g} "
                f"{row.work_s_per_request:>8.3f}s {row.cores_busy:>11,.0f} {row.rss_kib_per_host:>7.1f}K"
                f"   ({time.perf_counter() - wall:.1f} s real)",
                flush=True,
            )
    smallest = min(args.chunk_sizes)
    hosts = min(args.hosts)
    old = measure(hosts, args.jobs, smallest, args.rate, min(args.requests, 20_000), (1,))
    new = next(r for r in rows if r.hosts == hosts and r.chunk_size == smallest)
    print(
        f"\none stream per request (version 1), {hosts} hosts, chunk {smallest:.0e}: "
        f"{old.cpu_us_per_request:.1f} us CPU for {old.work_s_per_request * 1e3:.2f} ms of work per request, "
        f"{old.cores_busy:,.0f} cores busy; adaptive ranges keep {new.cores_busy / old.cores_busy:,.0f}x as many"
    )
    median = statistics.median(r.cpu_us_per_request for r in rows)
    print(f"median CPU per request over the fleets above: {median:.1f} us")


if __name__ == "__main__":
    main()
