"""Fuzzing the pool above the protocol core: random fault schedules, random consumers.

The protocol core is fuzzed on its own (tests/protocol/test_core_differential.py); what
sits above it, the slots, the dispatcher, batches, retries and the estimate runner, is
held to the project's promise here: **every failure path ends each request exactly
once**, the count is the kernel's own after any retries in any order, nothing is left
running, and nothing but mcpi's own errors comes out.

Each example builds a pool of 1 to 6 in-process fakes (``testing.inprocess``, injected
through ``WorkerPool(launcher=...)``) on Trio's mock clock with autojump, so a hang or a
stall costs no real time: the stall clock judges it. The i-th worker launched gets the
i-th fault of a drawn schedule, every later one is well behaved. A fault strikes at a
drawn moment (after 0 to 3 results): the worker dies (any exit status, EOF), hangs,
answers after it was given up on (slower than the task timeout and deaf to SIGTERM, so
its answer comes in the grace before SIGKILL), writes a bad frame (garbage, oversize,
half a frame), a wrong request id, an answer that breaks an answer's rules, answers
twice, refuses with retryable errors or for good, closes its stdout and lives on, never welcomes,
welcomes wrongly, or exits at once; and any worker may also be slow, run two jobs, speak
protocol version 1, write bytes that are no text to stderr, or ignore ``cancel``.
Meanwhile one to three consumers share the pool: concurrent ``pool.sample`` and
``pool.ping`` calls, some under a timeout that cancels them; ``imap_unordered`` over
chunks and ranges, some left early by ``break`` or by a timeout; or ``run_estimate``,
with ``max_time``, cancelled from outside, or ``verify=1`` against a worker giving
wrong counts (the only fault a worker's answer cannot show, so only a verified run
meets it). Sometimes the pool's block is left while all of that is still running.

Checked on every example:

- each call ends once: a result, or one error, or (only if it was cancelled) nothing;
  none is left waiting (the mock-clock bound turns a hang into a failure);
- every result is the kernel's count, computed here directly: a ``sample``'s, each
  stream of an ``imap_unordered``'s results, which together never name a stream twice
  and, for a batch that ran to its end, name every stream of every chunk once; an
  estimate's prefix;
- only mcpi's own errors come out, and only the ones the schedule can explain:
  ``ChunkFailed`` only if the schedule held as many failures as a chunk's attempts,
  ``PoolExhausted`` only if it held as many failed starts as a slot's, ``NothingCompleted``
  only under ``max_time``, ``VerificationFailed`` only in a verified run; never a
  ``WorkerFailure`` from ``sample`` or a batch, never anything else;
- once the consumers are done, nothing is left in the dispatcher's lines, and the pool
  still serves: one more chunk gives its kernel's count (unless the schedule could
  exhaust it);
- once the pool's block is left, every fake has exited (the in-process process table)
  and every slot is stopped or retired, with nothing in flight.

The smaller variant at the end runs the same kind of schedule against real subprocess
fakes (``python -m mcpi_coordinator.testing.fake_worker``) on the real clock, and asks
the process table that every one of them is gone.

``MCPI_FUZZ_EXAMPLES`` sets the in-process examples (CI's default keeps this file to
tens of seconds); the subprocess variant runs a fiftieth of that, 3 at least.
``pytest --hypothesis-seed=N`` varies the run.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from mcpi_coordinator.errors import ChunkFailed, McpiError, PoolExhausted, WorkerFailure
from mcpi_coordinator.launch.local import spawn_worker
from mcpi_coordinator.launch.transport import WorkerProcess
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.pool.stats import SlotState
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.run.estimate import NothingCompleted, run_estimate
from mcpi_coordinator.run.verify import VerificationFailed
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.fake_worker import fake_worker_command
from mcpi_coordinator.testing.inprocess import by_launch, fake_launcher
from mcpi_coordinator.testing.processes import wait_until_gone
from mcpi_worker.kernels import KERNELS, count_numpy

EXAMPLES = int(os.environ.get("MCPI_FUZZ_EXAMPLES", "150"))
SUBPROCESS_EXAMPLES = max(3, EXAMPLES // 50)

SEED = 2026_12_07
POINTS = 1_000
"""Points per stream: small, since the fakes count with the real kernel in-line."""
KERNEL = "numpy"
TASK_TIMEOUT = 5.0
STARTUP_TIMEOUT = 3.0
SHUTDOWN_GRACE = 1.0
MAX_CHUNK_ATTEMPTS = 3
MAX_START_ATTEMPTS = 3
STREAMS_PER_CONSUMER = 1_000
"""Each consumer counts its own block of streams; the pool's last check another."""
FAKE_TIME_BOUND = 1_000.0
"""Mock-clock seconds an example may take: only a hang or a livelock gets there. The
most an example can need is under 300 (8 faults, each at most a start-up timeout, a
task timeout, two graces, a back-off and the wait for a failed worker's account; then
30 s of consumer timeouts); 2,000 examples took 128 at most. A livelock (a restart
loop, say) costs real time per mock second, so the bound is not much higher."""


def expected(stream: int, points: int = POINTS) -> int:
    return count_numpy(SEED, stream, points)


@pytest.fixture(autouse=True)
def warnings_only_logging() -> Iterator[None]:
    """As the CLI's default: the fakes' stderr relayed at info costs nothing. (Module
    scope would not do: conftest resets structlog before every test.)"""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    yield
    structlog.configure(**saved)


# ------------------------------------------------------------------ fault schedules


@dataclass(frozen=True)
class Fault:
    """One launch's behaviour, and what it can cost the run."""

    kind: str
    behaviour: FakeBehaviour
    charges: int = 0
    """The most failures it can charge to chunks (a chunk fails after MAX_CHUNK_ATTEMPTS)."""
    early: bool = False
    """It may fail before answering anything: a failed start (a slot retires after
    MAX_START_ATTEMPTS in a row)."""
    lies: bool = False


exit_codes = st.sampled_from([0, 1, 3, -signal.SIGKILL, -signal.SIGSEGV])


@st.composite
def faults(draw: st.DrawFn, *, liars: bool = False, late: bool = True) -> Fault:
    """A misbehaving launch (or, sometimes, a well-behaved one with odd manners)."""
    kinds = ["none", "die", "hang", "garbage", "oversize", "eof_mid_frame", "wrong_id",
             "duplicate_id", "bad_answer", "close_stdout", "internal", "refuse", "silent",
             "exit_at_start", "bad_version"]  # fmt: skip
    if late:
        kinds.append("late")
    if liars:
        kinds.append("wrong_count")
    kind = draw(st.sampled_from(kinds))
    at = draw(st.integers(0, 3))
    # Manners any worker may have on top of its fault: none breaks a rule.
    manners: dict[str, Any] = {
        "slow": draw(st.sampled_from([0.0, 0.0, 0.01, 0.3, 1.5])),
        "jobs": draw(st.sampled_from([1, 1, 2])),
        "stderr_noise": draw(st.booleans()),
        "ignore_cancel": draw(st.booleans()),
        "versions": draw(st.sampled_from([(1, 2), (1, 2), (1,)])),
    }
    options: dict[str, Any]
    charges, early = 1, at == 0
    if kind == "none":
        options, charges, early = {}, 0, False
    elif kind == "die":
        options = {"crash_after": at, "exit_code": draw(exit_codes)}
    elif kind == "hang":
        options = {"hang_after": at, "ignore_sigterm": draw(st.booleans())}
    elif kind == "late":
        # Answers after the stall clock gave up on it, in the grace before SIGKILL.
        late_by = draw(st.floats(0.05, SHUTDOWN_GRACE, allow_nan=False))
        options, early = {"slow": TASK_TIMEOUT + late_by, "ignore_sigterm": True}, True
        manners["jobs"] = 1
    elif kind in ("garbage", "oversize", "eof_mid_frame", "wrong_id", "duplicate_id"):
        options = {kind: True, "misbehave_after": at, "exit_code": draw(exit_codes)}
        early = at == 0 and kind != "duplicate_id"  # a duplicate's first copy is an answer
    elif kind == "bad_answer":
        options = {"bad_answer": draw(st.sampled_from(["inside", "points", "pong", "nan"])), "misbehave_after": at}
    elif kind == "close_stdout":
        options = {"close_stdout_after": at}
    elif kind == "internal":
        errors = draw(st.integers(1, 3))
        options, charges, early = {"internal_errors": errors}, errors, False
    elif kind == "refuse":  # a refusal for good of what its welcome admits: a broken worker
        code = draw(st.sampled_from(["unknown_kernel", "invalid_request", "quantum_flux"]))
        options, early = {"internal_errors": draw(st.integers(1, 3)), "error_code": code}, True
    elif kind == "wrong_count":
        options = {"wrong_count": draw(st.integers(1, 5)), "wrong_count_times": draw(st.sampled_from([None, 1, 2]))}
        charges, early = 0, False
    else:  # failing starts: no request ever reaches them
        options = {kind: True, "exit_code": draw(exit_codes)} if kind == "exit_at_start" else {kind: True}
        charges, early = 0, True
    return Fault(kind, FakeBehaviour(**{**manners, **options}), charges, early, kind == "wrong_count")


# ------------------------------------------------------------------ consumers


@dataclass(frozen=True)
class Samples:
    """Concurrent ``pool.sample`` calls (one per stream) and ``pool.ping`` calls, each
    under its own timeout (None: none)."""

    timeouts: tuple[float | None, ...]
    pings: tuple[float | None, ...]


@dataclass(frozen=True)
class Imap:
    """One ``imap_unordered`` over chunks of these many streams, left after ``stop_after``
    results (None: run to the end) or at ``timeout``."""

    streams: tuple[int, ...]
    stop_after: int | None
    timeout: float | None


@dataclass(frozen=True)
class Estimate:
    """One ``run_estimate`` of ``chunks`` chunks (the last one short), with ``max_time``,
    cancelled from outside at ``cancel_at``, verifying every chunk or none."""

    chunks: int
    max_time: float | None
    cancel_at: float | None
    verify: bool


timeouts = st.one_of(st.none(), st.none(), st.floats(0.0, 20.0, allow_nan=False))

samples = st.builds(
    Samples, st.lists(timeouts, min_size=1, max_size=12).map(tuple), st.lists(timeouts, max_size=3).map(tuple)
)
imaps = st.builds(
    Imap,
    st.lists(st.sampled_from([1, 1, 1, 2, 5, 17, 40]), min_size=1, max_size=12).map(tuple),
    st.one_of(st.none(), st.none(), st.integers(0, 10)),
    timeouts,
)


@dataclass
class Ledger:
    """What each call ended with, by call; and every stream a result named."""

    ends: dict[str, list[object]] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    completed_batches: list[list[Chunk]] = field(default_factory=list)
    streams_seen: dict[int, int] = field(default_factory=dict)

    def end(self, call: str, outcome: object) -> None:
        self.ends.setdefault(call, []).append(outcome)

    def saw(self, result: ChunkResult) -> None:
        for offset, inside in enumerate(result.stream_counts):
            stream = result.chunk.stream + offset
            assert stream not in self.streams_seen, f"stream {stream} came twice"
            assert inside == expected(stream, result.chunk.points), f"stream {stream}: {inside}"
            self.streams_seen[stream] = inside


async def run_samples(pool: WorkerPool, spec: Samples, first: int, ledger: Ledger, name: str) -> None:
    async def one(call: str, chunk: Chunk | None, timeout: float | None) -> None:
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            try:
                if chunk is None:
                    slot = await pool.ping()
                    assert 0 <= slot < pool.size
                    ledger.end(call, slot)
                else:
                    result = await pool.sample(chunk)
                    assert result.chunk == chunk
                    assert result.inside == expected(chunk.stream), (chunk, result)
                    ledger.end(call, result)
            except McpiError as error:
                ledger.end(call, error)
        if scope.cancelled_caught:
            ledger.cancelled.add(call)

    async with trio.open_nursery() as nursery:
        for i, timeout in enumerate(spec.timeouts):
            chunk = Chunk(SEED, first + i, POINTS, KERNEL)
            nursery.start_soon(one, f"{name} sample {i}", chunk, timeout)
        for i, timeout in enumerate(spec.pings):
            nursery.start_soon(one, f"{name} ping {i}", None, timeout)


async def run_imap(pool: WorkerPool, spec: Imap, first: int, ledger: Ledger, name: str) -> None:
    chunks, stream = [], first
    for streams in spec.streams:
        chunks.append(Chunk(SEED, stream, POINTS, KERNEL, streams=streams))
        stream += streams
    taken = 0
    left_early = False
    with trio.move_on_after(math.inf if spec.timeout is None else spec.timeout) as scope:
        try:
            async with pool.imap_unordered(chunks) as results:
                async for result in results:
                    ledger.saw(result)
                    taken += 1
                    if spec.stop_after is not None and taken >= spec.stop_after:
                        left_early = True
                        break
        except McpiError as error:
            ledger.end(name, error)
            return
    if scope.cancelled_caught:
        ledger.cancelled.add(name)
    elif not left_early:
        ledger.end(name, "done")
        ledger.completed_batches.append(chunks)


async def count_inline(chunk: Chunk) -> int:
    """The coordinator's own count (``verify``), without a thread: under the autojump
    clock a task waiting on a thread looks idle and the clock would jump."""
    streams = range(chunk.stream, chunk.stream + chunk.streams)
    return sum(KERNELS[chunk.kernel](chunk.seed, stream, chunk.points, lambda: False) for stream in streams)


async def run_estimate_once(pool: WorkerPool, spec: Estimate, ledger: Ledger, name: str) -> None:
    chunk_size = POINTS
    points = spec.chunks * chunk_size - chunk_size // 3  # the last chunk short
    with trio.move_on_after(math.inf if spec.cancel_at is None else spec.cancel_at) as scope:
        try:
            result = await run_estimate(
                pool, points=points, seed=SEED, chunk_size=chunk_size, kernel=KERNEL,
                max_time=spec.max_time, verify=1.0 if spec.verify else 0.0, count_locally=count_inline,
            )  # fmt: skip
        except McpiError as error:
            ledger.end(name, error)
            return
        sizes = [min(chunk_size, points - s * chunk_size) for s in range(result.chunks)]
        assert list(result.chunk_points) == sizes
        assert list(result.chunk_inside) == [expected(s, size) for s, size in enumerate(sizes)]
        assert result.inside == sum(result.chunk_inside)
        assert result.points == sum(sizes)
        if result.stopped_early is None:
            assert result.points == points
        ledger.end(name, result)
    if scope.cancelled_caught:
        ledger.cancelled.add(name)


# ------------------------------------------------------------------ one example


class DeadlockError(AssertionError):
    """Every task waits, with no deadline left: nothing can ever wake one."""


def _deadlocked() -> None:
    raise DeadlockError("deadlock: every task waits and no deadline is left (trio.run ends in TrioInternalError)")


def _livelocked() -> None:
    raise DeadlockError(f"livelock: {DeadlockGuard.STEPS} task steps (trio.run ends in TrioInternalError)")


class DeadlockGuard(trio.abc.Instrument):
    """Ends a run that can no longer move, where ``fail_after`` cannot.

    Under the autojump clock, the mock-clock bound ends a hang by cancelling the example;
    but a wait inside a shielded scope (a slot stopping its worker) does not see that,
    and once every task waits with no deadline left, Trio polls with no timeout for ever,
    spinning the CPU, instead of jumping the clock. Nothing can wake a task then: the
    fakes are tasks of this run too, and nothing here runs in a thread (``count_inline``).
    So after ``IDLE_POLLS`` polls in a row with no task run and no deadline, the guard
    raises from the run loop (Trio reports it as ``TrioInternalError``): a failure, not a
    test that never ends. Likewise after ``STEPS`` task steps."""

    IDLE_POLLS = 10_000
    STEPS = 200_000
    """Task steps a run may take: a bound on a loop that never waits for the clock (a
    livelock, where neither the mock clock nor idleness ever comes). 1,500 examples took
    2,048 at most."""

    def __init__(self) -> None:
        self._idle = 0
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._idle = 0
        self.steps += 1
        if self.steps == self.STEPS:
            trio.lowlevel.current_trio_token().run_sync_soon(_livelocked)

    def before_io_wait(self, timeout: float) -> None:
        if trio.lowlevel.current_statistics().seconds_to_next_deadline < math.inf:
            self._idle = 0
            return
        self._idle += 1
        if self._idle == self.IDLE_POLLS:
            trio.lowlevel.current_trio_token().run_sync_soon(_deadlocked)


@dataclass(frozen=True)
class Example:
    schedule: tuple[Fault, ...]
    size: int
    depth: int
    wait_for_all: bool
    consumers: tuple[Samples | Imap | Estimate, ...]
    abandon_at: float | None
    """Leave the pool's block at this (mock) time, whatever is still running."""


@st.composite
def pool_examples(draw: st.DrawFn) -> Example:
    estimate = draw(st.integers(0, 3)) == 0
    if estimate:
        verify = draw(st.booleans())
        consumers: tuple[Samples | Imap | Estimate, ...] = (
            Estimate(
                draw(st.integers(1, 30)),
                draw(st.one_of(st.none(), st.none(), st.floats(0.0, 30.0, allow_nan=False))),
                draw(st.one_of(st.none(), st.none(), st.floats(0.0, 30.0, allow_nan=False))),
                verify,
            ),
        )
        # One liar at most: two that lie alike would agree (``verify`` is against one).
        schedule = draw(st.lists(faults(liars=verify), min_size=1, max_size=6, unique_by=lambda f: f.lies or id(f)))
    else:
        consumers = tuple(draw(st.lists(st.one_of(samples, imaps), min_size=1, max_size=3)))
        schedule = draw(st.lists(faults(), min_size=1, max_size=8))
    return Example(
        tuple(schedule),
        size=draw(st.integers(1, 6)),
        depth=draw(st.integers(1, 3)),
        wait_for_all=draw(st.booleans()),
        consumers=consumers,
        abandon_at=draw(st.one_of(st.none(), st.none(), st.none(), st.floats(0.0, 30.0, allow_nan=False))),
    )


def allowed_errors(example: Example) -> tuple[type[McpiError], ...]:
    """The errors the schedule can explain (see the module docstring)."""
    allowed: list[type[McpiError]] = []
    if sum(fault.charges for fault in example.schedule) >= MAX_CHUNK_ATTEMPTS:
        allowed.append(ChunkFailed)
    liar_alone = example.size == 1 and any(fault.lies for fault in example.schedule)
    if sum(fault.early for fault in example.schedule) >= MAX_START_ATTEMPTS or liar_alone:
        allowed.append(PoolExhausted)
    for consumer in example.consumers:
        if isinstance(consumer, Estimate):
            if consumer.max_time is not None:
                allowed.append(NothingCompleted)
            if consumer.verify:
                allowed.append(VerificationFailed)
    return tuple(allowed)


def check_error(error: object, allowed: tuple[type[McpiError], ...], call: str) -> None:
    assert isinstance(error, McpiError), (call, error)
    assert not isinstance(error, WorkerFailure) or " ping " in call, (call, error)  # ping raises its last
    if isinstance(error, WorkerFailure):
        assert ChunkFailed in allowed, (call, error)  # a ping out of attempts: as many failures
        return
    assert isinstance(error, allowed), (call, repr(error), allowed)
    message = str(error)
    assert message and "\n" not in message, message


def run_example(example: Example) -> Ledger:
    ledger = Ledger()
    allowed = allowed_errors(example)

    async def consume(pool: WorkerPool) -> None:
        async with trio.open_nursery() as consumers:
            for index, consumer in enumerate(example.consumers):
                first = index * STREAMS_PER_CONSUMER
                name = f"consumer {index}"
                if isinstance(consumer, Samples):
                    consumers.start_soon(run_samples, pool, consumer, first, ledger, name)
                elif isinstance(consumer, Imap):
                    consumers.start_soon(run_imap, pool, consumer, first, ledger, name)
                else:
                    consumers.start_soon(run_estimate_once, pool, consumer, ledger, name)

    async def main() -> None:
        with trio.fail_after(FAKE_TIME_BOUND):
            async with trio.open_nursery() as fakes:
                launcher = fake_launcher(fakes, by_launch(*(fault.behaviour for fault in example.schedule)))
                pool = WorkerPool(
                    example.size, launcher=launcher, pipeline_depth=example.depth,
                    task_timeout=TASK_TIMEOUT, startup_timeout=STARTUP_TIMEOUT, shutdown_grace=SHUTDOWN_GRACE,
                    max_chunk_attempts=MAX_CHUNK_ATTEMPTS, max_start_attempts=MAX_START_ATTEMPTS, backoff_s=0.1,
                    wait_for_all=example.wait_for_all,
                )  # fmt: skip
                try:
                    async with pool:
                        with trio.move_on_after(math.inf if example.abandon_at is None else example.abandon_at):
                            await consume(pool)
                            check_nothing_in_line(pool)
                            await check_still_serves(pool, ledger, liar=any(f.lies for f in example.schedule))
                except PoolExhausted as error:
                    ledger.end("entering the pool", error)
                check_all_stopped(pool)
                # The pool has closed: the in-process process table must be empty.
                assert launcher.alive() == [], launcher.alive()
                for fault in example.schedule[: len(launcher.launched)]:
                    event(f"fault launched: {fault.kind}")

    clock = trio.testing.MockClock(autojump_threshold=0)
    guard = DeadlockGuard()
    trio.run(main, clock=clock, instruments=[guard])
    event(f"task steps: {2 ** math.ceil(math.log2(max(guard.steps, 1)))} at most")
    event(f"mock seconds: {2 ** math.ceil(math.log2(max(clock.current_time(), 1)))} at most")

    for call, ends in ledger.ends.items():
        assert len(ends) == 1, (call, ends)  # never both, never twice
        if isinstance(ends[0], BaseException):
            check_error(ends[0], allowed, call)
    if example.abandon_at is None:
        # Nothing cancelled them but their own timeouts: every call ended or was cancelled.
        calls = set(ledger.ends) | ledger.cancelled
        for index, consumer in enumerate(example.consumers):
            name = f"consumer {index}"
            if isinstance(consumer, Samples):
                wanted = {f"{name} sample {i}" for i in range(len(consumer.timeouts))}
                wanted |= {f"{name} ping {i}" for i in range(len(consumer.pings))}
                if "entering the pool" not in ledger.ends:
                    assert wanted <= calls, wanted - calls
                for i, timeout in enumerate(consumer.timeouts):
                    if timeout is None and f"{name} sample {i}" in ledger.cancelled:
                        raise AssertionError(f"{name} sample {i} was cancelled with no timeout")
            elif "entering the pool" not in ledger.ends and not (
                isinstance(consumer, Imap) and consumer.stop_after is not None
            ):
                assert name in calls, name
    for batch in ledger.completed_batches:
        for chunk in batch:
            for stream in range(chunk.stream, chunk.stream + chunk.streams):
                assert stream in ledger.streams_seen, f"a completed batch never counted stream {stream}"
    return ledger


def check_nothing_in_line(pool: WorkerPool) -> None:
    """Every request of a consumer that is done has ended or been withdrawn: none is left
    in the dispatcher's lines, to be sent to a worker for nobody (read from its private
    state: the pool shows no count of the requests in line)."""
    dispatcher = pool._dispatcher
    assert not dispatcher._retries and not dispatcher._fresh, dispatcher
    assert not dispatcher._outcomes, dispatcher


async def check_still_serves(pool: WorkerPool, ledger: Ledger, *, liar: bool = False) -> None:
    """After all that, the pool still counts a chunk right (or says why it cannot); with a
    ``liar`` among the workers (unverified, this sample may meet it), still counts one."""
    chunk = Chunk(SEED, 10 * STREAMS_PER_CONSUMER, POINTS, KERNEL)
    try:
        result = await pool.sample(chunk)
    except McpiError as error:
        ledger.end("last sample", error)
        return
    assert liar or result.inside == expected(chunk.stream)
    ledger.end("last sample", result)


def check_all_stopped(pool: WorkerPool) -> None:
    stats = pool.stats
    assert stats.alive == 0 and stats.in_flight == 0, stats
    for worker in stats.workers:
        assert worker.state in (SlotState.STOPPED, SlotState.RETIRED), worker
        assert worker.pid is None, worker


FUZZ = settings(
    max_examples=EXAMPLES,
    # Real time, as a bound on a loop that never blocks (the mock clock bounds the rest):
    # an example takes a fraction of a second even on a loaded machine.
    deadline=timedelta(seconds=60),
    # Not ``explain``: it reruns a failure under a tracer, minutes for one example here.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(pool_examples())
def test_every_request_ends_once_with_the_kernel_s_count_under_any_fault_schedule(example: Example) -> None:
    ledger = run_example(example)
    event(f"ends: {sorted({type(e[0]).__name__ for e in ledger.ends.values()})}")


# ------------------------------------------------------------------ real processes


def subprocess_faults() -> st.SearchStrategy[Fault]:
    """The in-process faults, on the real clock: slowness kept to fractions of a second
    (a hang costs the task timeout), no late answers (they cost more), no silent start (it
    costs the start-up timeout, long here: a loaded machine starts a process slowly), no
    two jobs (two cores in all)."""
    return faults(late=False).filter(lambda fault: fault.kind != "silent").map(
        lambda fault: replace(fault, behaviour=replace(fault.behaviour, slow=min(fault.behaviour.slow, 0.05), jobs=1))
    )


REAL_TASK_TIMEOUT = 5.0
REAL_TIME_BOUND = 300.0  # generous: CI is a loaded 2-core box


@settings(max_examples=SUBPROCESS_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(subprocess_faults(), min_size=1, max_size=4),
    st.integers(1, 3),
    imaps,
    st.lists(timeouts.map(lambda t: None if t is None else t / 10), min_size=1, max_size=4),
)
@pytest.mark.slow
def test_real_subprocess_fakes_end_every_request_once_and_leave_no_process(
    schedule: list[Fault], size: int, imap: Imap, sample_timeouts: list[float | None]
) -> None:
    calls = Samples(tuple(sample_timeouts), ())
    example = Example(tuple(schedule), size, 2, True, (imap, calls), None)
    allowed = allowed_errors(example)
    ledger = Ledger()
    behaviours = iter(fault.behaviour for fault in schedule)
    pids: list[int] = []

    async def launch(index: int) -> WorkerProcess:
        behaviour = next(behaviours, FakeBehaviour())
        process = await spawn_worker(fake_worker_command(behaviour, python=sys.executable))
        pids.append(process.pid)
        return process

    async def main() -> None:
        with trio.fail_after(REAL_TIME_BOUND):
            try:
                async with WorkerPool(
                    size, launcher=launch, task_timeout=REAL_TASK_TIMEOUT, startup_timeout=60.0,
                    shutdown_grace=SHUTDOWN_GRACE, max_chunk_attempts=MAX_CHUNK_ATTEMPTS,
                    max_start_attempts=MAX_START_ATTEMPTS, backoff_s=0.05,
                ) as pool:  # fmt: skip
                    async with trio.open_nursery() as consumers:
                        consumers.start_soon(run_imap, pool, imap, 0, ledger, "consumer 0")
                        consumers.start_soon(run_samples, pool, calls, STREAMS_PER_CONSUMER, ledger, "consumer 1")
                    check_nothing_in_line(pool)
                    await check_still_serves(pool, ledger)
            except PoolExhausted as error:
                ledger.end("entering the pool", error)

    trio.run(main)
    for fault in schedule[: len(pids)]:
        event(f"fault launched: {fault.kind}")
    event(f"ends: {sorted({type(e[0]).__name__ for e in ledger.ends.values()})}")
    for call, ends in ledger.ends.items():
        assert len(ends) == 1, (call, ends)
        if isinstance(ends[0], BaseException):
            check_error(ends[0], allowed, call)
    for batch in ledger.completed_batches:
        for chunk in batch:
            assert all(s in ledger.streams_seen for s in range(chunk.stream, chunk.stream + chunk.streams))
    # The process table: every worker the pool started has exited.
    left, _ = wait_until_gone(pids, timeout_s=10.0)
    assert left == [], left
