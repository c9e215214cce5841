"""Hostile workers into the coordinator: every fault ends in a replaced worker or one
clear error, in bounded time, with nothing left running and nothing lost.

tests/pool/test_pool.py checks each fault alone against in-process fakes. Here:

1. generated *sequences* of faults (hypothesis), in-process, on a mock clock: any mix of
   faults that let a worker do some work first gives exactly the undisturbed count;
   any mix at all gives that count or one clear ``McpiError`` line; either way in
   bounded (fake) time and with every fake reaped;
2. the same faults from real subprocess fakes (``fake_worker``), replacements being
   real ``mcpi-worker`` processes, with the process table checked afterwards.

``mcpi estimate --worker-cmd`` with subprocess fakes end to end (crashing and hung
workers, a 100 MB stderr flood with the coordinator's RSS watched, crash loops) is
tested in tests/cli/test_cli_estimate.py.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest
import structlog
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpi_coordinator.errors import ChunkFailed, McpiError, PoolExhausted
from mcpi_coordinator.launch.local import spawn_worker
from mcpi_coordinator.launch.transport import WorkerProcess
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.fake_worker import fake_worker_command
from mcpi_coordinator.testing.inprocess import FakeLauncher, by_launch, fake_launcher
from mcpi_coordinator.testing.processes import still_running
from mcpi_worker.kernels import count_numpy

SEED = 99
POINTS = 20_000
MAX_CHUNK_ATTEMPTS = 5
FAKE_TIME_BOUND = 10_000.0
"""Seconds of mock-clock time any in-process run may take: a hang fails the test."""
REAL_TIME_BOUND = 120.0  # generous: CI is a loaded 2-core box


def chunks(n: int) -> list[Chunk]:
    return [Chunk(seed=SEED, stream=i, points=POINTS) for i in range(n)]


def expected_inside(n: int) -> int:
    return sum(count_numpy(SEED, i, POINTS) for i in range(n))


async def count_all(pool: WorkerPool, work: list[Chunk]) -> int:
    inside = 0
    async with pool.imap_unordered(work) as results:
        async for result in results:
            inside += result.inside
    return inside


@pytest.fixture(autouse=True)
def warnings_only_logging() -> Iterator[None]:
    """Like the CLI's default: worker stderr relayed at info costs nothing."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    yield
    structlog.configure(**saved)


# ------------------------------------------------- 1. sequences of faults, in-process

exit_codes = st.sampled_from([0, 1, 3, -signal.SIGKILL, -signal.SIGSEGV])
after = st.integers(1, 3)


@st.composite
def useful_first_fault(draw: st.DrawFn) -> FakeBehaviour:
    """A fault that strikes only after the worker answered at least one request."""
    kind = draw(st.sampled_from(["crash", "hang", "garbage", "oversize", "wrong_id",
                                 "duplicate_id", "eof_mid_frame", "slow", "flood", "none",
                                 "bad_answer"]))
    if kind == "crash":
        return FakeBehaviour(crash_after=draw(after), exit_code=draw(exit_codes))
    if kind == "hang":
        return FakeBehaviour(hang_after=draw(after), ignore_sigterm=draw(st.booleans()))
    if kind == "slow":  # slower than the others, faster than the task timeout
        return FakeBehaviour(slow=draw(st.floats(0.5, 8.0)))
    if kind == "flood":
        return FakeBehaviour(stderr_flood_mb=draw(st.sampled_from([0.1, 1.0])))
    if kind == "none":
        return FakeBehaviour()
    if kind == "bad_answer":
        answer = draw(st.sampled_from(["inside", "points", "pong", "nan"]))
        return FakeBehaviour(misbehave_after=draw(after), bad_answer=answer)
    # A fault of the stream itself, in place of answer number misbehave_after + 1.
    misbehave_after, exit_code = draw(after), draw(exit_codes)
    stream_faults = {
        "garbage": FakeBehaviour(misbehave_after=misbehave_after, exit_code=exit_code, garbage=True),
        "oversize": FakeBehaviour(misbehave_after=misbehave_after, exit_code=exit_code, oversize=True),
        "wrong_id": FakeBehaviour(misbehave_after=misbehave_after, exit_code=exit_code, wrong_id=True),
        "duplicate_id": FakeBehaviour(misbehave_after=misbehave_after, exit_code=exit_code, duplicate_id=True),
        "eof_mid_frame": FakeBehaviour(misbehave_after=misbehave_after, exit_code=exit_code, eof_mid_frame=True),
    }
    return stream_faults[kind]


@st.composite
def any_fault(draw: st.DrawFn) -> FakeBehaviour:
    """Anything, including workers that fail before doing any work at all."""
    kind = draw(st.sampled_from(["useful", "exit_at_start", "silent", "bad_version",
                                 "crash_now", "garbage_now", "hang_now", "internal"]))
    if kind == "useful":
        return draw(useful_first_fault())
    if kind == "exit_at_start":
        return FakeBehaviour(exit_at_start=True, exit_code=draw(exit_codes))
    if kind == "silent":
        return FakeBehaviour(silent=True)
    if kind == "bad_version":
        return FakeBehaviour(bad_version=True)
    if kind == "crash_now":
        return FakeBehaviour(crash_after=0, exit_code=draw(exit_codes))
    if kind == "garbage_now":
        return FakeBehaviour(garbage=True)
    if kind == "hang_now":
        return FakeBehaviour(hang_after=0)
    return FakeBehaviour(internal_errors=draw(st.integers(1, 3)))


def run_in_process(
    behaviours: Sequence[FakeBehaviour], size: int, n_chunks: int,
    then: FakeBehaviour = FakeBehaviour(),  # noqa: B008 (frozen: one shared default is safe)
) -> tuple[int | McpiError, FakeLauncher, float]:
    """Run ``n_chunks`` on a pool whose i-th launched worker gets ``behaviours[i]``
    (then ``then``), on a mock clock. Returns the count or the error, the launcher
    (every fake it started) and the mock time taken."""
    outcome: list[int | McpiError] = []
    launchers: list[FakeLauncher] = []

    async def main() -> float:
        start = trio.current_time()
        with trio.fail_after(FAKE_TIME_BOUND):
            async with trio.open_nursery() as nursery:
                launcher = fake_launcher(nursery, by_launch(*behaviours, then=then))
                launchers.append(launcher)
                try:
                    async with WorkerPool(
                        size, launcher=launcher, task_timeout=20.0, startup_timeout=5.0,
                        max_chunk_attempts=MAX_CHUNK_ATTEMPTS,
                    ) as pool:
                        outcome.append(await count_all(pool, chunks(n_chunks)))
                except McpiError as error:
                    outcome.append(error)
                # The pool has closed: the process table of fakes must be empty.
                assert launcher.alive() == [], launcher.alive()
        return trio.current_time() - start

    took = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return outcome[0], launchers[0], took


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    # Fewer faulty launches than a chunk's attempts: no chunk can fail for good.
    st.lists(useful_first_fault(), min_size=1, max_size=MAX_CHUNK_ATTEMPTS - 1),
    st.integers(1, 3),
    st.integers(1, 40),
)
def test_any_mix_of_faults_after_some_work_gives_the_undisturbed_count(
    faults: list[FakeBehaviour], size: int, n_chunks: int
) -> None:
    outcome, launcher, _ = run_in_process(faults, size, n_chunks)
    assert outcome == expected_inside(n_chunks)
    assert launcher.restarts <= len(faults)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_fault(), min_size=1, max_size=10), st.integers(1, 3), st.integers(1, 20))
def test_any_mix_of_faults_gives_the_count_or_one_clear_error(
    faults: list[FakeBehaviour], size: int, n_chunks: int
) -> None:
    outcome, launcher, _ = run_in_process(faults, size, n_chunks)
    if isinstance(outcome, McpiError):
        message = str(outcome)
        assert message and "\n" not in message and "Traceback" not in message
        assert isinstance(outcome, (PoolExhausted, ChunkFailed)), repr(outcome)
        assert "worker" in message  # it says which worker failed, and how
    else:
        assert outcome == expected_inside(n_chunks)
    # Only the given faulty launches, plus replacements for them, were ever started.
    assert len(launcher.launched) <= size + len(faults)


def test_a_crash_loop_ending_in_chunk_failed_still_names_command_exit_code_and_stderr() -> None:
    # Two slots, one chunk: that chunk fails on five workers before either slot has
    # been retired three times, so the run ends in ChunkFailed, not PoolExhausted.
    # Its one line must say as much as PoolExhausted's would.
    crash = FakeBehaviour(crash_after=0, exit_code=7)
    outcome, _launcher, _ = run_in_process([crash] * 10, size=2, n_chunks=1)
    assert isinstance(outcome, McpiError)
    message = str(outcome)
    assert "FakeWorkerProcess" in message  # the command (fakes have no argv)
    assert "exit code 7" in message
    assert "crashing as asked" in message  # the tail of its stderr


async def test_a_slow_worker_is_waited_for_not_killed(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(FAKE_TIME_BOUND):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, by_launch(FakeBehaviour(slow=15.0)))
            async with WorkerPool(2, launcher=launcher, task_timeout=20.0) as pool:
                assert await count_all(pool, chunks(12)) == expected_inside(12)
                assert pool.stats.restarts == 0
            assert launcher.alive() == [] and launcher.launched[0].signals == []


async def test_a_worker_silent_on_a_request_costs_one_task_timeout(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(FAKE_TIME_BOUND):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, by_launch(FakeBehaviour(hang_after=1, ignore_sigterm=True)))
            start = trio.current_time()
            async with WorkerPool(1, launcher=launcher, task_timeout=30.0) as pool:
                assert await count_all(pool, chunks(6)) == expected_inside(6)
                assert pool.stats.restarts == 1
            assert 30.0 <= trio.current_time() - start < 40.0
            assert launcher.launched[0].returncode == -signal.SIGKILL


async def test_a_coordinator_away_at_every_ring_still_judges_a_hung_worker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A coordinator that runs 1 s in every 11 (starved of CPU, or stopped again and
    again) finds its stall clock late at every ring. A late ring gives the requests in
    flight a fresh budget (the coordinator was away, not the worker), but only once per
    request: the hung worker is judged at its request's second late ring and replaced.
    Before, each late ring gave a fresh budget, and the run never ended."""

    async def away_at_every_ring() -> None:
        while True:
            await trio.sleep(1.0)
            autojump_clock.jump(10.0)  # a deadline in the jump rings at its end, >= 4 s late

    with trio.fail_after(FAKE_TIME_BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(away_at_every_ring)
            launcher = fake_launcher(nursery, by_launch(FakeBehaviour(hang_after=1)))
            async with WorkerPool(1, launcher=launcher, task_timeout=5.0) as pool:
                assert await count_all(pool, chunks(6)) == expected_inside(6)
                assert pool.stats.restarts == 1
                assert ["task timeout" in failure.reason for failure in pool.stats.failures] == [True]
            nursery.cancel_scope.cancel()


# ------------------------------------------------------- 2. real subprocess fakes


def _bin(name: str) -> str:
    script = Path(sys.executable).with_name(name)
    return str(script) if script.exists() else name


class RecordingLauncher:
    """Starts ``commands[i]`` for the i-th launch (then the real mcpi-worker) and
    remembers every pid, so the test can check the process table afterwards."""

    def __init__(self, commands: Sequence[Sequence[str]]) -> None:
        self._commands = list(commands)
        self.pids: list[int] = []

    async def __call__(self, index: int) -> WorkerProcess:
        n = len(self.pids)
        command = self._commands[n] if n < len(self._commands) else [_bin("mcpi-worker")]
        process = await spawn_worker(command)
        self.pids.append(process.pid)
        return process


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [
        FakeBehaviour(misbehave_after=1, garbage=True),
        FakeBehaviour(misbehave_after=1, oversize=True),
        FakeBehaviour(misbehave_after=1, wrong_id=True),
        FakeBehaviour(misbehave_after=1, duplicate_id=True),
        FakeBehaviour(misbehave_after=1, eof_mid_frame=True),
        FakeBehaviour(crash_after=1, exit_code=-signal.SIGKILL),
        FakeBehaviour(hang_after=1, ignore_sigterm=True),
        FakeBehaviour(misbehave_after=1, bad_answer="inside"),
        FakeBehaviour(misbehave_after=1, bad_answer="points"),
        FakeBehaviour(misbehave_after=1, bad_answer="pong"),
        FakeBehaviour(misbehave_after=1, bad_answer="nan"),
    ],
    ids=lambda b: ",".join(f"{k}={v}" for k, v in b.faults.items()),
)
async def test_subprocess_fault_is_replaced_by_a_real_worker_and_nothing_is_lost(fault: FakeBehaviour) -> None:
    # Both slots start faulty; every replacement is a real mcpi-worker.
    launcher = RecordingLauncher([fake_worker_command(fault)] * 2)
    try:
        with trio.fail_after(REAL_TIME_BOUND):
            async with WorkerPool(2, launcher=launcher, task_timeout=1.5) as pool:
                assert await count_all(pool, chunks(16)) == expected_inside(16)
                assert pool.stats.restarts >= 1
        assert still_running(launcher.pids) == [], "the pool returned with workers still running"
    finally:
        for pid in still_running(launcher.pids):
            psutil.Process(pid).kill()
