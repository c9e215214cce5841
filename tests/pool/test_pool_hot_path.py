"""The pool's per-request path wakes only the tasks that carry the request, and spawns none.

Measured, not timed: a Trio instrument counts task steps, so the test is exact on a
loaded machine. Each task step costs a pass of the scheduler (~10 µs here), which is
what a tiny request's round trip is made of (see benchmarks/overhead.py).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio
from worker_process import PATIENT_START_S

from mcpi_coordinator.bench.overhead import AS_DEEP_AS_WORKERS_ALLOW
from mcpi_coordinator.connection.worker_connection import _Holding
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import fake_launcher
from mcpi_worker.kernels import count_numpy
from mcpi_worker.protocol.messages import field_problem

REQUESTS = 200
RANGE_STREAMS = 2000
"""Streams of the ranges below: cut into a few dozen pieces by the dispatcher."""


class _Census(trio.abc.Instrument):
    """Task steps by task name, and task spawns, while ``counting``."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()
        self.seen: set[str] = set()
        """Every task name that took a step, counting or not: a test that counts one
        task's steps checks its name is here, so a rename cannot make it pass vacuously."""
        self.spawned = 0
        self.on = False

    @contextmanager
    def counting(self) -> Iterator[None]:
        self.on = True
        try:
            yield
        finally:
            self.on = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.seen.add(task.name)
        if self.on:
            self.steps[task.name] += 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += self.on

    def coordinator_steps(self) -> int:
        """Steps of the pool's own tasks and the test's: not the in-process fakes'."""
        return sum(n for name, n in self.steps.items() if "fake" not in name.lower())


@asynccontextmanager
async def counted_pool(size: int, **options: Any) -> AsyncIterator[tuple[WorkerPool, _Census]]:
    """A pool of in-process fakes, and a census of the task steps taken in it."""
    census = _Census()
    trio.lowlevel.add_instrument(census)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                launcher = fake_launcher(nursery, FakeBehaviour())
                async with WorkerPool(size, launcher=launcher, **options) as pool:
                    yield pool, census
                nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(census)


async def test_the_stall_watchdog_sleeps_through_requests_that_are_answered() -> None:
    async with counted_pool(1) as (pool, census):
        with census.counting():
            for stream in range(REQUESTS):
                await pool.sample(Chunk(seed=1, stream=stream, points=10))
    # The slot task (its name says "slot") supervises the worker; before the fix it
    # woke twice per request (request sent, answer received) to re-arm its timer.
    assert "mcpi slot 0" in census.seen, sorted(census.seen)  # the task this counts exists
    assert census.steps["mcpi slot 0"] < REQUESTS / 10, census.steps.most_common(8)


async def test_one_request_costs_two_task_steps() -> None:
    # The caller sends (a direct write: no writer task woken) and waits; the stdout
    # reader wakes it. Before: + a writer-task step, + a lane checkpoint.
    async with counted_pool(1) as (pool, census):
        await pool.sample(Chunk(seed=1, stream=0, points=10))  # warm
        with census.counting():
            for stream in range(REQUESTS):
                await pool.sample(Chunk(seed=1, stream=stream, points=10))
                await pool.ping()
    # Exactly one step per request for each: the caller (woken with its answer) and the
    # stdout reader (one read per answer, one at a time); the slot's stall watchdog may
    # wake a few times at most (test_the_stall_watchdog_sleeps_...), nothing else runs.
    caller = census.steps["<test 'test_one_request_costs_two_task_steps'>"]  # pytest-trio's name
    readers = sum(n for name, n in census.steps.items() if name.endswith("WorkerConnection._read_stdout"))
    assert (caller, readers) == (2 * REQUESTS, 2 * REQUESTS), census.steps.most_common(5)
    assert census.coordinator_steps() - caller - readers <= 10, census.steps.most_common(5)
    assert census.spawned == 0


async def test_a_batch_costs_no_task_per_chunk() -> None:
    async with counted_pool(2, pipeline_depth=4) as (pool, census):
        with census.counting():
            work = (Chunk(seed=1, stream=s, points=10) for s in range(REQUESTS))
            async with pool.imap_unordered(work) as results:
                done = [result async for result in results]
    assert len(done) == REQUESTS
    assert census.spawned == 0
    # The readers' steps are shared by the answers of one read (a read takes one step,
    # and brings one answer or more), and so are the consumer's: it is woken once for
    # what a read brought and takes it all with no further scheduler pass (one per
    # result before). A task per chunk took ~5 steps a chunk; one more scheduler pass
    # per request, or per read, breaks one of these.
    consumer = census.steps["<test 'test_a_batch_costs_no_task_per_chunk'>"]  # pytest-trio's name
    readers = sum(n for name, n in census.steps.items() if name.endswith("WorkerConnection._read_stdout"))
    assert consumer <= readers + 1, census.steps.most_common(5)
    assert 0 < readers <= REQUESTS, census.steps.most_common(5)
    assert census.coordinator_steps() == consumer + readers, census.steps.most_common(5)


async def test_a_batch_through_real_workers_takes_one_consumer_step_per_read() -> None:
    """The real ``mcpi-worker`` answers a pipelined stream of small samples a read's worth
    at a time; the consumer takes each read's answers with one step, and every chunk
    comes back once, counted right."""
    census = _Census()
    trio.lowlevel.add_instrument(census)
    try:
        with trio.fail_after(300):  # a bound against a hang: workers start slowly on a busy machine
            async with WorkerPool(2, pipeline_depth=64, startup_timeout=PATIENT_START_S) as pool:
                work = [Chunk(seed=1, stream=s, points=10) for s in range(REQUESTS)]
                with census.counting():
                    async with pool.imap_unordered(work) as results:
                        done = [result async for result in results]
    finally:
        trio.lowlevel.remove_instrument(census)
    assert sorted(result.chunk.stream for result in done) == list(range(REQUESTS))
    assert sum(result.inside for result in done) == sum(count_numpy(1, s, 10) for s in range(REQUESTS))
    consumer = census.steps["<test 'test_a_batch_through_real_workers_takes_one_consumer_step_per_read'>"]
    readers = sum(n for name, n in census.steps.items() if name.endswith("WorkerConnection._read_stdout"))
    assert 0 < consumer <= readers + 1 < REQUESTS, census.steps.most_common(8)


def _readers(census: _Census) -> int:
    return sum(n for name, n in census.steps.items() if name.endswith("WorkerConnection._read_stdout"))


async def test_a_range_costs_no_task_and_no_scheduler_pass_per_piece() -> None:
    """A range given to ``imap_unordered`` goes out in pieces, cut by the dispatcher in
    the task that learnt of a worker's room; each piece is a request with its result,
    and costs no task of its own, nor a scheduler pass: the readers take one step per
    read (one answer or more), the consumer at most one per read, nothing else runs.
    A task per piece (or per range) breaks ``spawned``; a pass per piece, the steps."""
    async with counted_pool(2, pipeline_depth=4) as (pool, census):
        with census.counting():
            work = [Chunk(seed=1, stream=0, points=10, streams=RANGE_STREAMS)]
            async with pool.imap_unordered(work) as results:
                done = [result async for result in results]
    pieces = len(done)
    assert sorted(s for r in done for s in range(r.chunk.stream, r.chunk.stream + r.chunk.streams)) == list(
        range(RANGE_STREAMS)
    )
    assert 1 < pieces < RANGE_STREAMS
    assert census.spawned == 0
    consumer = census.steps["<test 'test_a_range_costs_no_task_and_no_scheduler_pass_per_piece'>"]
    readers = _readers(census)
    assert consumer <= readers + 1, census.steps.most_common(5)
    assert 0 < readers <= pieces, census.steps.most_common(5)
    assert census.coordinator_steps() == consumer + readers, census.steps.most_common(5)


async def test_ranges_one_after_another_cost_one_step_per_piece_and_nothing_per_range() -> None:
    """Ranges one after another (each its own ``imap_unordered``, as the bench's batched
    row sends them), on one worker with one request in flight, so that every piece is
    one answer in one read: the reader takes one step per piece, the consumer one (woken
    with its result), and nothing else runs; no task is spawned. A scheduler pass or a
    task per range, or per piece, breaks the equalities."""
    pieces = 0
    async with counted_pool(1, pipeline_depth=1) as (pool, census):
        with census.counting():
            for first in range(0, 20 * 50, 50):
                work = [Chunk(seed=1, stream=first, points=0, streams=50)]
                async with pool.imap_unordered(work) as results:
                    done = [result async for result in results]
                assert sum(r.chunk.streams for r in done) == 50
                assert all(r.stream_counts == (0,) * r.chunk.streams for r in done)
                pieces += len(done)
    assert census.spawned == 0
    consumer = census.steps["<test 'test_ranges_one_after_another_cost_one_step_per_piece_and_nothing_per_range'>"]
    assert pieces > 20 and consumer == _readers(census) == pieces, (pieces, census.steps.most_common(5))
    assert census.coordinator_steps() == 2 * pieces, census.steps.most_common(5)


async def test_a_zero_point_range_through_real_workers_takes_one_consumer_step_per_read() -> None:
    """``mcpi bench overhead``'s batched row on the real ``mcpi-worker``: a range of
    zero-point streams comes back in pieces, every stream's count 0 and each once, the
    consumer taking at most one step per read of the workers' answers and no task spawned."""
    census = _Census()
    trio.lowlevel.add_instrument(census)
    try:
        with trio.fail_after(300):  # a bound against a hang: workers start slowly on a busy machine
            async with WorkerPool(2, pipeline_depth=64, startup_timeout=PATIENT_START_S) as pool:
                work = [Chunk(seed=1, stream=0, points=0, streams=RANGE_STREAMS)]
                with census.counting():
                    async with pool.imap_unordered(work) as results:
                        done = [result async for result in results]
    finally:
        trio.lowlevel.remove_instrument(census)
    counts = {
        s: n
        for r in done
        for s, n in zip(range(r.chunk.stream, r.chunk.stream + r.chunk.streams), r.stream_counts, strict=True)
    }
    assert counts == dict.fromkeys(range(RANGE_STREAMS), 0)
    assert sum(r.chunk.streams for r in done) == RANGE_STREAMS
    assert census.spawned == 0
    consumer = census.steps["<test 'test_a_zero_point_range_through_real_workers_takes_one_consumer_step_per_read'>"]
    readers = _readers(census)
    assert 0 < consumer <= readers + 1 <= len(done) + 1, census.steps.most_common(8)


@contextmanager
def calls_to(*functions: Any) -> Iterator[Counter[str]]:
    """Count the calls of ``functions`` (by their code) made on this thread in the block:
    the pool's tasks and the in-process fakes all run on it."""
    codes = {function.__code__: function.__qualname__ for function in functions}
    counted: Counter[str] = Counter()

    def profile(frame: Any, event: str, _arg: Any) -> None:
        if event == "call" and frame.f_code in codes:
            counted[codes[frame.f_code]] += 1

    sys.setprofile(profile)
    try:
        yield counted
    finally:
        sys.setprofile(None)


async def test_a_chunks_fields_are_checked_where_it_is_made_not_again_per_request() -> None:
    """A ``Chunk`` is checked against the protocol's field table when it is made; the
    request that sends it does not check its fields again (``send_checked``), the
    connection's ``holding`` block is one object for its life, not one per read, and a
    caller waiting for its one request (``sample``, ``ping``) is woken without a
    ``trio.Event`` of its own. All are on every request's path: a call of any of them per
    request breaks this (each was)."""
    watched = (field_problem, _Holding.__init__, trio.Event.__init__, WorkerPool._record)
    async with counted_pool(1) as (pool, _census):
        chunks = [Chunk(seed=1, stream=stream, points=10) for stream in range(REQUESTS)]
        ranges = [Chunk(seed=1, stream=stream, points=0, streams=8) for stream in range(0, 8 * 10, 8)]
        with calls_to(*watched) as one_at_a_time:
            for chunk in chunks:
                await pool.sample(chunk)
                await pool.ping()
        with calls_to(*watched, Chunk.__post_init__) as batched:
            async with pool.imap_unordered(ranges) as results:
                assert sum([len(result.stream_counts) async for result in results]) == 80
    assert one_at_a_time == {"WorkerPool._record": REQUESTS}, one_at_a_time  # the profile saw the path
    # Only the pieces the dispatcher cuts off the ranges are chunks made here (each
    # checked then, once); nothing is checked again, and the batch's own wake-ups are
    # its business (batch.py).
    assert batched["field_problem"] == batched["_Holding.__init__"] == 0, batched
    assert batched["Chunk.__post_init__"] > 0, batched


PIPELINED = 2000
"""Chunks of the pipelined run below: enough that what a read costs is shared by many."""


@contextmanager
def coordinator_calls() -> Iterator[Counter[str]]:
    """Count every Python function called in the pool's own tasks in the block (by
    ``module:qualified name``), not in the in-process fakes' (their tasks' names say
    "fake") nor in Trio's run loop between steps (``_Census`` counts the steps)."""
    counted: Counter[str] = Counter()

    def profile(frame: Any, event: str, _arg: Any) -> None:
        if event != "call":
            return
        try:
            task = trio.lowlevel.current_task()
        except RuntimeError:
            return  # Trio's run loop between steps: not any one task's
        if "fake" not in task.name:
            counted[f"{frame.f_globals.get('__name__', '?')}:{frame.f_code.co_qualname}"] += 1

    sys.setprofile(profile)
    try:
        yield counted
    finally:
        sys.setprofile(None)


async def test_a_pipelined_zero_point_sample_costs_the_coordinator_few_python_calls() -> None:
    """``imap_unordered`` of 0-point samples through real workers, as ``mcpi bench
    overhead``'s one-at-a-time row runs them: its rate is bound by the coordinator's CPU
    per sample, nearly all of it Python calls (encoding each request, decoding and
    checking each answer, the dispatch, the consumer). Counted per sample, of every
    function run in the coordinator's tasks (mcpi's and the libraries'), so a call added
    per request or per answer shows. It was 62-63 a sample before the batched decoding,
    the plain sample's frame without a ``Sample``, the unrolled field checks and the
    dispatch without its per-request look-ups; 40-42 after. And the requests a burst of
    results makes room for go out in one write to each worker (a write per request
    sent at the start, or to a worker with room, woke it for each: 158 writes for
    these 2,000 samples before)."""
    with trio.fail_after(300):  # a bound against a hang: workers start slowly on a busy machine
        async with WorkerPool(2, pipeline_depth=AS_DEEP_AS_WORKERS_ALLOW, startup_timeout=PATIENT_START_S) as pool:
            empty = Chunk(seed=0, stream=0, points=0)
            async with pool.imap_unordered(empty for _ in range(8)) as results:  # warm
                assert len([result async for result in results]) == 8
            with coordinator_calls() as counted:
                async with pool.imap_unordered(empty for _ in range(PIPELINED)) as results:
                    done = [result async for result in results]
    assert len(done) == PIPELINED and all(r.inside == 0 and r.chunk == empty for r in done)
    reads = counted["mcpi_worker.protocol.coordinator_end:CoordinatorEnd.receive_data"]
    writes = counted["mcpi_coordinator.connection.pipes:write_nowait"]
    assert 0 < reads < PIPELINED, counted.most_common(8)  # the profile saw the path
    assert writes <= 2 * reads + 2, (writes, reads)  # one per worker for each burst, and the start's
    per_sample = sum(counted.values()) / PIPELINED
    assert per_sample <= 45, (per_sample, counted.most_common(40))
