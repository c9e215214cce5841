"""Per-task overhead on tiny tasks: our pool against the libraries people would use instead.

Two figures per approach, from runs of ``tasks`` tasks each:
- ``round_trip_us``: median time of one task submitted alone and waited for (latency);
- ``tasks_per_s``: ``tasks`` submitted at once to ``workers`` workers (throughput),
  pipelined as far as the approach allows: the median of ``THROUGHPUT_PASSES`` passes.

Workers are started and warmed up before any clock runs: start-up is not overhead
per task. The peers are the pools a Python user reaches for: the standard library's
``multiprocessing.Pool`` (``apply_async`` one call at a time; ``imap_unordered``, its
fastest way through many) and ``ProcessPoolExecutor``; joblib (``Parallel`` with
``batch_size='auto'``, and the loky executor underneath it), pebble, trio-parallel and
anyio. Those outside the standard library come with the optional ``bench`` extra; one
that cannot be imported is reported as unavailable, never as a crash.

Two rows are of batches (``BATCHED``): joblib's, which sends many tiny tasks in one
message once it has timed a few, and mcpi's own way of doing that, ``trio-pool/range``
(``trio_pool_range``: the tasks as one range of streams, cut into pieces by the pool's
dispatcher). Their tasks/s are held against each other; the other rows send one task
per message.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor, Future, ProcessPoolExecutor, wait
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

import trio

from mcpi_coordinator.bench import tasks as shipped
from mcpi_coordinator.bench.measure import dropping_queued_work, run_trio
from mcpi_coordinator.bench.off_main import off_main_thread, on_stop
from mcpi_coordinator.launch.transport import Launcher
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool

if TYPE_CHECKING:
    import multiprocessing.pool


@dataclass(frozen=True, slots=True)
class Overhead:
    """One approach's figures, or why it could not be measured (``unavailable``)."""

    approach: str
    round_trip_us: float | None
    tasks_per_s: float | None
    unavailable: str | None = None

    @classmethod
    def missing(cls, approach: str, exc: ImportError) -> Overhead:
        return cls(approach, None, None, unavailable=f"cannot import {exc.name or exc}: {exc}")


def _median_us(samples_ns: list[int]) -> float:
    return statistics.median(samples_ns) / 1000


def _sync_round_trip_us(call: Callable[[], object], tasks: int) -> float:
    samples = []
    for _ in range(tasks):
        started = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - started)
    return _median_us(samples)


Task = Callable[[], Coroutine[Any, Any, None]]


async def _async_round_trip_us(call: Task, tasks: int) -> float:
    samples = []
    for _ in range(tasks):
        started = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - started)
    return _median_us(samples)


THROUGHPUT_PASSES: Final = 3
"""Passes of ``tasks`` tasks at once whose median rate is an approach's tasks/s, for every
approach alike. One pass's rate swings widely between passes through one pool on a
shared machine (``multiprocessing.Pool.imap_unordered``'s the most; docs/bench.md says by
how much), so the rate of one pass, which ``mcpi bench overhead`` reported, was a draw."""


def _median_rate(run: Callable[[int], object], tasks: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """The median rate of ``THROUGHPUT_PASSES`` calls of ``run(tasks)``, each timed alone
    by ``clock`` (seconds)."""
    rates = []
    for _ in range(THROUGHPUT_PASSES):
        started = clock()
        run(tasks)
        rates.append(tasks / (clock() - started))
    return statistics.median(rates)


async def _median_rate_async(run: Callable[[int], Awaitable[object]], tasks: int) -> float:
    """``_median_rate`` of an async ``run``."""
    rates = []
    for _ in range(THROUGHPUT_PASSES):
        started = time.perf_counter()
        await run(tasks)
        rates.append(tasks / (time.perf_counter() - started))
    return statistics.median(rates)


TaskGroupFactory = Callable[[], AbstractAsyncContextManager[Any]]
"""``trio.open_nursery`` or ``anyio.create_task_group``: both give ``start_soon``."""


async def _measure_async(
    name: str, call: Task, tasks: int, workers: int, open_group: TaskGroupFactory
) -> Overhead:
    """Warm up, then the two figures: sequential round trip and concurrent throughput
    (``tasks`` calls started at once in one task group; the approach limits concurrency)."""

    async def start_all(count: int) -> None:
        async with open_group() as group:
            for _ in range(count):
                group.start_soon(call)

    await start_all(_warm_up_count(workers))
    round_trip = await _async_round_trip_us(call, tasks)
    return Overhead(name, round_trip, await _median_rate_async(start_all, tasks))


def _warm_up_count(workers: int) -> int:
    return 4 * workers


# ------------------------------------------------------------------- process-pool


@off_main_thread
def process_pool(tasks: int, workers: int, *, initializer: Callable[[], object] | None = None) -> Overhead:
    """``initializer`` (default ``tasks.initializer()``) runs first in each worker."""
    pool = ProcessPoolExecutor(max_workers=workers, initializer=initializer or shipped.initializer())
    with dropping_queued_work(pool) as executor:
        return _executor_figures("process-pool", executor, tasks, workers)


def _executor_figures(name: str, executor: Executor, tasks: int, workers: int) -> Overhead:
    """A ``concurrent.futures``-style executor: ``submit(...).result()`` one at a time,
    then ``tasks`` submitted at once and waited for."""

    def submit_all(count: int) -> None:
        wait([executor.submit(shipped.noop) for _ in range(count)])

    submit_all(_warm_up_count(workers))
    round_trip = _sync_round_trip_us(lambda: executor.submit(shipped.noop).result(), tasks)
    return Overhead(name, round_trip, _median_rate(submit_all, tasks))


# ------------------------------------------------------------- multiprocessing.Pool


@off_main_thread
def mp_pool_apply_async(tasks: int, workers: int) -> Overhead:
    """``multiprocessing.Pool.apply_async``: one ``.get()`` at a time, then ``tasks``
    calls in flight at once."""
    import multiprocessing

    with multiprocessing.Pool(workers, initializer=shipped.initializer()) as pool, on_stop(pool.terminate):

        def apply_all(count: int) -> None:
            for pending in [pool.apply_async(shipped.noop) for _ in range(count)]:
                pending.get()

        apply_all(_warm_up_count(workers))
        round_trip = _sync_round_trip_us(lambda: pool.apply_async(shipped.noop).get(), tasks)
        per_s = _median_rate(apply_all, tasks)
        _close_gracefully(pool)
    return Overhead("mp-pool/apply_async", round_trip, per_s)


@off_main_thread
def mp_pool_imap_unordered(tasks: int, workers: int) -> Overhead:
    """``multiprocessing.Pool.imap_unordered`` (its default ``chunksize=1``, so a task
    is a task, as for every other approach): a map of one item at a time, then one map
    over ``tasks`` items."""
    import multiprocessing

    with multiprocessing.Pool(workers, initializer=shipped.initializer()) as pool, on_stop(pool.terminate):

        def map_all(count: int) -> None:
            for _ in pool.imap_unordered(shipped.noop_of, range(count)):
                pass

        map_all(_warm_up_count(workers))
        round_trip = _sync_round_trip_us(lambda: map_all(1), tasks)
        per_s = _median_rate(map_all, tasks)
        _close_gracefully(pool)
    return Overhead("mp-pool/imap_unordered", round_trip, per_s)


def _close_gracefully(pool: multiprocessing.pool.Pool) -> None:
    """Let the workers finish rather than ``terminate`` them (what leaving ``with`` does):
    the pool ends as a program that is done with it ends it, each worker leaving its
    loop, rather than by SIGTERM in the middle of it."""
    pool.close()
    pool.join()


# ------------------------------------------------------------------ joblib, loky


JOBLIB_ROUND_TRIPS: Final = 100
"""Round trips measured for joblib: each is a whole ``Parallel`` call, far slower than
the others' tasks (``mcpi bench overhead`` reports it), so it gets fewer of them."""


@off_main_thread
def joblib_parallel(tasks: int, workers: int) -> Overhead:
    """joblib's ``Parallel`` (its loky backend, ``batch_size='auto'``: joblib groups tiny
    tasks into batches by their measured duration), kept open across calls: a call of
    one task at a time, then one call of ``tasks`` tasks."""
    try:
        import joblib
    except ImportError as exc:
        return Overhead.missing("joblib", exc)

    # The initializer is a keyword of Parallel itself, which hands its unknown keywords
    # to the backend: backend_kwargs={"initializer": ...} was one unknown keyword, and
    # joblib's workers never ran it.
    with joblib.Parallel(n_jobs=workers, batch_size="auto", initializer=shipped.initializer()) as parallel:
        call = joblib.delayed(shipped.noop)

        def run_all(count: int) -> None:
            parallel(call() for _ in range(count))

        run_all(_warm_up_count(workers))
        # A call of one task costs milliseconds: a median of fewer keeps the run short.
        round_trip = _sync_round_trip_us(lambda: run_all(1), min(tasks, JOBLIB_ROUND_TRIPS))
        per_s = _median_rate(run_all, tasks)
    return Overhead("joblib", round_trip, per_s)


@off_main_thread
def loky_executor(tasks: int, workers: int) -> Overhead:
    """loky's reusable executor (joblib's process pool), used directly: ``submit``."""
    try:
        from joblib.externals.loky import get_reusable_executor
    except ImportError as exc:
        return Overhead.missing("loky", exc)

    executor = get_reusable_executor(max_workers=workers, reuse=False, initializer=shipped.initializer())
    try:
        with on_stop(lambda: executor.shutdown(wait=False, kill_workers=True)):
            figures = _executor_figures("loky", executor, tasks, workers)
    except BaseException:  # interrupted: not after every task submitted (dropping_queued_work)
        executor.shutdown(wait=True, kill_workers=True)
        raise
    executor.shutdown(wait=True)
    return figures


# ------------------------------------------------------------------------- pebble


@off_main_thread
def pebble_pool(tasks: int, workers: int) -> Overhead:
    """pebble's ``ProcessPool``: ``schedule(...).result()``, then ``tasks`` scheduled at once."""
    try:
        import pebble
    except ImportError as exc:
        return Overhead.missing("pebble", exc)

    with pebble.ProcessPool(max_workers=workers, initializer=shipped.initializer()) as pool, on_stop(pool.stop):

        def schedule_all(count: int) -> None:
            futures: list[Future[None]] = [pool.schedule(shipped.noop) for _ in range(count)]
            wait(futures)

        schedule_all(_warm_up_count(workers))
        round_trip = _sync_round_trip_us(lambda: pool.schedule(shipped.noop).result(), tasks)
        try:
            per_s = _median_rate(schedule_all, tasks)
        except BaseException:  # interrupted: not after every task scheduled (dropping_queued_work)
            pool.stop()  # type: ignore[no-untyped-call]  # pebble has no annotations
            raise
    return Overhead("pebble", round_trip, per_s)


# ------------------------------------------------------------------- trio-parallel


def trio_parallel(tasks: int, workers: int) -> Overhead:
    try:
        import trio_parallel as library
    except ImportError as exc:
        return Overhead.missing("trio-parallel", exc)

    async def measure() -> Overhead:
        limiter = trio.CapacityLimiter(workers)
        async with library.open_worker_context(init=shipped.initializer()) as context:

            async def call() -> None:
                await context.run_sync(shipped.noop, limiter=limiter)

            return await _measure_async("trio-parallel", call, tasks, workers, trio.open_nursery)

    return run_trio(measure)


# ---------------------------------------------------------------- anyio-to-process


def anyio_to_process(tasks: int, workers: int) -> Overhead:
    try:
        import anyio
        import anyio.to_process
    except ImportError as exc:
        return Overhead.missing("anyio-to-process", exc)

    async def measure() -> Overhead:
        limiter = anyio.CapacityLimiter(workers)

        async def call() -> None:
            await anyio.to_process.run_sync(shipped.noop, limiter=limiter)

        return await _measure_async(
            "anyio-to-process", call, tasks, workers, anyio.create_task_group
        )

    # anyio's default backend, asyncio: what a user of anyio.to_process gets.
    return anyio.run(measure)


# ------------------------------------------------------------------------ trio-pool

EMPTY_CHUNK: Final = Chunk(seed=0, stream=0, points=0)
"""A sample of 0 points: the least real work there is, for ``trio-pool/sample``. It takes
the path of any sample, every check of the request and of its answer included; like the
peers' no-op it computes nothing (a stream of no points counts 0 without its generator:
``mcpi_worker.sampling.count_groups``)."""


AS_DEEP_AS_WORKERS_ALLOW: Final = 1 << 10
"""The pool caps its pipelining depth at each worker's ``max_inflight`` (its welcome
says how many requests it queues); tiny tasks want all of it."""


def trio_pool(tasks: int, workers: int) -> Overhead:
    """Our protocol's cheapest request, ``ping``, through the pool (``WorkerPool.ping``):
    it takes a lane and comes back through the same dispatch as a chunk, with no work
    in it, as the peers' no-op function has none. Concurrent: one task per call, as
    for trio-parallel and anyio."""

    async def measure() -> Overhead:
        async with WorkerPool(workers, pipeline_depth=AS_DEEP_AS_WORKERS_ALLOW) as pool:

            async def call() -> None:
                await pool.ping()

            return await _measure_async("trio-pool", call, tasks, workers, trio.open_nursery)

    return run_trio(measure)


def trio_pool_sample(tasks: int, workers: int, *, launcher: Launcher | None = None) -> Overhead:
    """A 0-point ``sample`` instead: the path real work takes through the pool and the
    worker (with nothing to count, no kernel runs).
    Round trip: ``WorkerPool.sample`` alone. Concurrent: ``imap_unordered`` over
    ``tasks`` such chunks, the pool's way to run many (as ``submit`` is the
    executor's). ``launcher``: how the pool starts its workers (its default's if None)."""

    async def measure() -> Overhead:
        async with WorkerPool(workers, launcher=launcher, pipeline_depth=AS_DEEP_AS_WORKERS_ALLOW) as pool:

            async def call() -> None:
                await pool.sample(EMPTY_CHUNK)

            async def run_many(count: int) -> None:
                async with pool.imap_unordered(EMPTY_CHUNK for _ in range(count)) as results:
                    async for _ in results:
                        pass

            await run_many(_warm_up_count(workers))
            round_trip = await _async_round_trip_us(call, tasks)
            return Overhead("trio-pool/sample", round_trip, await _median_rate_async(run_many, tasks))

    return run_trio(measure)


def trio_pool_range(tasks: int, workers: int) -> Overhead:
    """0-point chunks batched as ``mcpi estimate`` batches a run's small chunks, as joblib's
    ``batch_size='auto'`` batches tiny tasks: ``tasks`` chunks (consecutive streams, 0
    points each) given to ``imap_unordered`` as one range, ``Chunk(streams=tasks)``, which
    the dispatcher cuts into pieces sized for each worker; a piece is one ``sample``,
    answered with each of its streams' counts, every one checked. Its tasks/s counts
    chunks, and the counts of every chunk are checked to have come back (each 0).
    Round trip: one chunk alone through the same call (a range of one stream is a plain
    sample), as joblib's is a ``Parallel`` call of one task. Raises ``RuntimeError`` if
    the results do not cover every chunk once."""

    async def measure() -> Overhead:
        async with WorkerPool(workers, pipeline_depth=AS_DEEP_AS_WORKERS_ALLOW) as pool:

            async def run(count: int) -> None:
                counts: list[int] = []
                async with pool.imap_unordered([replace(EMPTY_CHUNK, streams=count)]) as results:
                    async for result in results:
                        counts.extend(result.stream_counts)
                if len(counts) != count or any(counts):
                    raise RuntimeError(f"{count} zero-point chunks came back as {len(counts)} counts")

            async def call() -> None:
                await run(1)

            await run(_warm_up_count(workers))
            round_trip = await _async_round_trip_us(call, tasks)
            return Overhead(RANGE_ROW, round_trip, await _median_rate_async(run, tasks))

    return run_trio(measure)


RANGE_ROW: Final = "trio-pool/range"
"""``trio_pool_range``'s row: mcpi's batched one, beside joblib's."""

BATCHED: Final = frozenset({"joblib", RANGE_ROW})
"""The rows whose tasks/s are of batches: many tasks in one message."""


OVERHEAD_APPROACHES: dict[str, Callable[[int, int], Overhead]] = {
    "process-pool": process_pool,
    "mp-pool/apply_async": mp_pool_apply_async,
    "mp-pool/imap_unordered": mp_pool_imap_unordered,
    "joblib": joblib_parallel,
    RANGE_ROW: trio_pool_range,
    "loky": loky_executor,
    "pebble": pebble_pool,
    "trio-parallel": trio_parallel,
    "anyio-to-process": anyio_to_process,
    "trio-pool": trio_pool,
    "trio-pool/sample": trio_pool_sample,
}
"""Measured in this order (the batched rows side by side); each is ``(tasks, workers) ->
Overhead``."""
