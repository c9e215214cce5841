"""WorkerPool against in-process fake workers (mcpi_coordinator.testing), injected
through the ``launcher`` parameter. Time-dependent tests use ``autojump_clock``: a
"slow" or "hung" fake costs no real time."""

from __future__ import annotations

import itertools
import json
import math
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import asdict

import pytest
import structlog
import trio
from structlog.testing import capture_logs
from worker_process import PATIENT_START_S

from mcpi_coordinator.cli.logging import configure_logging
from mcpi_coordinator.errors import (
    ChunkFailed,
    PoolClosed,
    PoolExhausted,
    RequestFailed,
)
from mcpi_coordinator.launch.transport import WorkerProcess
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.stats import SlotState
from mcpi_coordinator.pool.worker_pool import CLIENT_NAME, WorkerPool, default_task_timeout
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import by_launch, by_slot, fake_launcher
from mcpi_coordinator.testing.processes import still_running
from mcpi_worker import protocol
from mcpi_worker.kernels import count_numpy

SEED = 2024
POINTS = 5_000


def chunks(n: int, points: int = POINTS) -> list[Chunk]:
    return [Chunk(seed=SEED, stream=i, points=points) for i in range(n)]


def expected_inside(n: int, points: int = POINTS) -> int:
    return sum(count_numpy(SEED, i, points) for i in range(n))


async def until(condition: Callable[[], bool]) -> None:
    """Wait (in small steps of the test's clock) until ``condition()`` holds."""
    while not condition():
        await trio.sleep(0.01)


class PeakInFlight:
    """The most requests ``pool`` had in flight, sampled every 0.1 (fake) seconds."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.value = 0

    async def watch(self) -> None:
        while True:
            self.value = max(self.value, self.pool.stats.in_flight)
            await trio.sleep(0.1)


async def run_all(pool: WorkerPool, work: list[Chunk]) -> int:
    inside = 0
    async with pool.imap_unordered(work) as results:
        async for result in results:
            assert result.inside == count_numpy(SEED, result.chunk.stream, result.chunk.points)
            inside += result.inside
    return inside


@pytest.mark.parametrize("expected_points", [None, 0, 10**10])
async def test_every_worker_s_hello_carries_the_pool_s_size_hint(expected_points: int | None) -> None:
    """protocol.md §5.1: ``WorkerPool(expected_points=)`` goes in each hello; none by default."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour())
            async with WorkerPool(2, launcher=launcher, expected_points=expected_points) as pool:
                assert await run_all(pool, chunks(4)) == expected_inside(4)
            hellos = [fake.stats.received[0] for fake in launcher.launched]
            assert hellos == [protocol.Hello(protocol.PROTOCOL_VERSIONS, CLIENT_NAME, expected_points)] * 2


async def test_handshake_stats_and_repr() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour())
            async with WorkerPool(3, launcher=launcher) as pool:
                stats = pool.stats
                assert (stats.size, stats.alive, stats.in_flight, stats.completed) == (3, 3, 0, 0)
                assert [w.state for w in stats.workers] == ["ready"] * 3
                assert {w.pid for w in stats.workers} == {p.pid for p in launcher.launched}
                assert {w.host for w in stats.workers} == {socket.gethostname()}
                assert "size=3 alive=3 in_flight=0 completed=0 restarts=0 retired=0" in repr(pool)
                for fake in launcher.launched:
                    hello = fake.stats.received[0]
                    assert isinstance(hello, protocol.Hello)
                    assert hello.versions == protocol.PROTOCOL_VERSIONS
                assert await run_all(pool, chunks(9)) == expected_inside(9)
                stats = pool.stats
                assert stats.completed == 9
                assert sum(w.chunks for w in stats.workers) == 9
                assert sum(w.points for w in stats.workers) == 9 * POINTS
            assert launcher.alive() == []
            for fake in launcher.launched:
                assert fake.returncode == 0  # an orderly shutdown, not a kill
                assert isinstance(fake.stats.received[-1], protocol.Shutdown)
                assert fake.signals == []
            assert "closed" in repr(pool) and pool.stats.alive == 0


async def test_slot_states_are_enums_that_read_as_the_words_of_the_json() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour())
            async with WorkerPool(1, launcher=launcher) as pool:
                (ready,) = pool.stats.workers
                assert ready.state is SlotState.READY
                assert json.dumps(asdict(ready)["state"]) == '"ready"'  # mcpi estimate --json
                assert f"{ready.state}" == "ready"
            assert pool.stats.workers[0].state is SlotState.STOPPED


async def test_requests_are_pipelined_up_to_the_depth_and_matched_by_id(autojump_clock: object) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(slow=1.0, max_inflight=4))
            async with WorkerPool(1, launcher=launcher, pipeline_depth=2) as pool:
                peak = PeakInFlight(pool)
                nursery.start_soon(peak.watch)
                start = trio.current_time()
                assert await run_all(pool, chunks(6)) == expected_inside(6)
                # One worker, one sample at a time: 6 fake seconds, never idle.
                assert trio.current_time() - start == pytest.approx(6.0, abs=0.2)
                assert peak.value == 2
                nursery.cancel_scope.cancel()
            samples = [m for m in launcher.launched[0].stats.received if isinstance(m, protocol.Sample)]
            ids = [m.id for m in samples]
            assert len(set(ids)) == len(ids) == 6  # never reused


async def test_depth_is_capped_by_the_workers_max_inflight(autojump_clock: object) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(slow=1.0, max_inflight=1))
            async with WorkerPool(1, launcher=launcher, pipeline_depth=4) as pool:
                peak = PeakInFlight(pool)
                nursery.start_soon(peak.watch)
                assert await run_all(pool, chunks(4)) == expected_inside(4)
                assert peak.value == 1
                nursery.cancel_scope.cancel()
            assert not launcher.launched[0].stats.errors_sent  # never a 'busy'


async def test_a_slow_worker_pulls_fewer_chunks(autojump_clock: object) -> None:
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(
                nursery, by_slot({0: FakeBehaviour(slow=0.1)}, then=FakeBehaviour(slow=1.0))
            )
            async with WorkerPool(2, launcher=launcher) as pool:
                assert await run_all(pool, chunks(44)) == expected_inside(44)
                fast, slow = pool.stats.workers
                assert fast.chunks >= 5 * slow.chunks  # 10x faster; pipelining blurs the ratio a little


@pytest.mark.parametrize(
    "fault",
    [
        FakeBehaviour(crash_after=2),
        FakeBehaviour(crash_after=2, exit_code=-signal.SIGKILL),
        FakeBehaviour(misbehave_after=2, garbage=True),
        FakeBehaviour(misbehave_after=2, oversize=True),
        FakeBehaviour(misbehave_after=2, wrong_id=True),
        FakeBehaviour(misbehave_after=2, duplicate_id=True),
        FakeBehaviour(misbehave_after=2, eof_mid_frame=True),
        FakeBehaviour(hang_after=2),
    ],
    ids=lambda b: ",".join(f"{k}={v}" for k, v in b.faults.items()),
)
async def test_a_failing_worker_is_replaced_and_the_count_is_identical(
    fault: FakeBehaviour, autojump_clock: object
) -> None:
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, by_launch(fault))
            async with WorkerPool(2, launcher=launcher, task_timeout=20) as pool:
                assert await run_all(pool, chunks(30)) == expected_inside(30)
                await until(lambda: pool.stats.alive == 2)  # the replacement may still be starting
                stats = pool.stats
                assert stats.restarts == 1 and stats.alive == 2 and stats.retired == 0
                assert sum(w.restarts for w in stats.workers) == 1
            assert launcher.restarts == 1
            assert launcher.alive() == []
            [faulty] = [p for p in launcher.launched if p.behaviour == fault]
            # It really was stopped: by a signal, or by itself on the EOF it got first.
            assert faulty.returncode is not None


@pytest.mark.parametrize("ignores_sigterm", [False, True])
async def test_a_hung_worker_is_stopped_at_the_task_timeout(autojump_clock: object, ignores_sigterm: bool) -> None:
    """No waiting for a hung worker to shut down, but SIGTERM before SIGKILL: a launcher
    such as srun or ssh ends its remote side on SIGTERM (a SIGKILL to its group orphans
    a Slurm job). One that ignores SIGTERM is killed after the grace period."""
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            hang = FakeBehaviour(hang_after=0, ignore_sigterm=ignores_sigterm)
            launcher = fake_launcher(nursery, by_launch(hang))
            async with WorkerPool(1, launcher=launcher, task_timeout=7.0, shutdown_grace=1.5) as pool:
                start = trio.current_time()
                result = await pool.sample(Chunk(SEED, 0, POINTS))
                assert result.inside == count_numpy(SEED, 0, POINTS)
                waited = trio.current_time() - start
                # the timeout, the SIGTERM grace if it had to run out, a quick restart
                assert 7.0 <= waited < 9.0 + 1.5 * ignores_sigterm
            hung = launcher.launched[0]
            expected = [signal.SIGTERM, signal.SIGKILL] if ignores_sigterm else [signal.SIGTERM]
            assert hung.signals == expected
            assert pool.stats.restarts == 1


async def test_the_task_timeout_is_not_charged_for_a_queued_neighbour(autojump_clock: object) -> None:
    # Each sample takes 4 s; with two in flight the second waits 4 s before it starts,
    # so a clock started at sending would see 8 s > 6 s. Counted from the previous
    # answer, nobody overruns.
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(slow=4.0))
            async with WorkerPool(1, launcher=launcher, task_timeout=6.0, pipeline_depth=2) as pool:
                assert await run_all(pool, chunks(5)) == expected_inside(5)
                assert pool.stats.restarts == 0


def test_default_task_timeout_grows_with_the_chunk() -> None:
    assert default_task_timeout(0) == 30.0
    assert default_task_timeout(10_000_000) == pytest.approx(40.0)
    assert default_task_timeout(10**9) == pytest.approx(1030.0)


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        (FakeBehaviour(exit_at_start=True, exit_code=7), ["exit code 7", "exiting at start as asked"]),
        (FakeBehaviour(exit_at_start=True, exit_code=-signal.SIGSEGV), ["killed by SIGSEGV"]),
        (FakeBehaviour(bad_version=True), ["protocol version 99"]),
        (FakeBehaviour(silent=True), ["no welcome within the 5 s start-up timeout"]),
    ],
    ids=["exit-7", "segv", "bad-version", "silent"],
)
async def test_a_crash_loop_at_start_ends_with_one_clear_error(
    behaviour: FakeBehaviour, expected: list[str], autojump_clock: object
) -> None:
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, behaviour)
            with capture_logs() as logs, pytest.raises(PoolExhausted) as raised:
                async with WorkerPool(2, launcher=launcher, startup_timeout=5, max_start_attempts=3):
                    pytest.fail("the pool must not open")
            message = str(raised.value)
            assert "\n" not in message
            assert "no worker left" in message and "FakeWorkerProcess" in message
            for text in expected:
                assert text in message
            assert len(launcher.launched) == 2 * 3
            assert launcher.alive() == []
            # Nobody ever worked: the error says it all, no warning per slot.
            assert [e for e in logs if e["log_level"] == "warning"] == []


async def test_a_worker_that_breaks_on_its_first_request_every_time_ends_the_run(
    autojump_clock: object,
) -> None:
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(garbage=True))
            async with WorkerPool(2, launcher=launcher) as pool:
                with pytest.raises((PoolExhausted, ChunkFailed)) as raised:
                    await run_all(pool, chunks(10))
            assert "frame_too_large" in str(raised.value)
            assert launcher.alive() == []


async def test_a_slot_that_cannot_start_is_retired_with_one_warning_and_the_run_goes_on(
    autojump_clock: object,
) -> None:
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(
                nursery, by_slot({1: FakeBehaviour(exit_at_start=True, exit_code=255)}, launches=None)
            )
            with capture_logs() as logs:
                async with WorkerPool(2, launcher=launcher, max_start_attempts=3) as pool:
                    assert await run_all(pool, chunks(6)) == expected_inside(6)
                    stats = pool.stats
                    assert (stats.alive, stats.retired) == (1, 1)
                    assert [w.state for w in stats.workers] == ["ready", "retired"]
            warnings = [e for e in logs if e["log_level"] == "warning"]
            assert len(warnings) == 1
            assert warnings[0]["event"] == "worker_retired" and warnings[0]["slot"] == 1
            assert "exit code 255" in warnings[0]["reason"]
            assert len(launcher.launches_for(1)) == 3


async def test_retryable_worker_errors_are_retried_without_a_restart() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(internal_errors=2))
            async with WorkerPool(1, launcher=launcher) as pool:
                result = await pool.sample(Chunk(SEED, 3, POINTS))
                assert result.inside == count_numpy(SEED, 3, POINTS)
                assert pool.stats.restarts == 0


async def test_an_unoffered_kernel_is_refused_with_a_clear_error() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(kernels=("numpy",)))
            async with WorkerPool(1, launcher=launcher) as pool:
                with pytest.raises(RequestFailed, match="no worker offers kernel 'python'"):
                    await pool.sample(Chunk(SEED, 0, POINTS, kernel="python"))
                mixed = [Chunk(SEED, 0, POINTS), Chunk(SEED, 1, POINTS, kernel="python")]
                with pytest.raises(RequestFailed, match="no worker offers kernel 'python'"):
                    await run_all(pool, mixed)
                # The pool is still fine for what the worker does offer.
                assert (await pool.sample(Chunk(SEED, 0, POINTS))).inside == count_numpy(SEED, 0, POINTS)


async def test_cancelling_the_caller_reaches_every_worker(autojump_clock: object) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(slow=1000.0))
            with trio.move_on_after(5):
                async with WorkerPool(3, launcher=launcher) as pool:
                    await run_all(pool, chunks(100))
            assert launcher.alive() == []
            for fake in launcher.launched:
                received = fake.stats.received
                sent_ids = {m.id for m in received if isinstance(m, protocol.Sample)}
                cancelled_ids = {m.id for m in received if isinstance(m, protocol.Cancel)}
                assert len(sent_ids) == 2 and cancelled_ids == sent_ids
                assert isinstance(received[-1], protocol.Shutdown)
                assert fake.returncode == 0 and fake.signals == []
            assert pool.stats.in_flight == 0


async def test_leaving_imap_early_cancels_the_rest_and_the_pool_stays_usable(autojump_clock: object) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(slow=1.0))
            async with WorkerPool(2, launcher=launcher) as pool:
                endless = (Chunk(SEED, i, POINTS) for i in itertools.count())
                async with pool.imap_unordered(endless) as results:  # consumed lazily
                    async for _ in results:
                        if pool.stats.completed >= 5:
                            break
                # Leaving wrote the cancels; let the in-process fakes read them.
                await trio.testing.wait_all_tasks_blocked()
                cancels = sum(
                    isinstance(m, protocol.Cancel) for f in launcher.launched for m in f.stats.received
                )
                assert cancels >= 1
                result = await pool.sample(Chunk(SEED, 7, POINTS))
                assert result.inside == count_numpy(SEED, 7, POINTS)
                assert pool.stats.restarts == 0 and pool.stats.alive == 2


async def test_a_worker_ignoring_shutdown_and_sigterm_is_killed(autojump_clock: object) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(hang_after=0, ignore_sigterm=True))
            async with WorkerPool(1, launcher=launcher, shutdown_grace=2.0) as pool:
                with trio.move_on_after(1):
                    await pool.sample(Chunk(SEED, 0, POINTS))
                closing = trio.current_time()
            assert trio.current_time() - closing == pytest.approx(4.0, abs=0.1)
            fake = launcher.launched[0]
            assert fake.signals == [signal.SIGTERM, signal.SIGKILL]
            assert fake.returncode == -signal.SIGKILL


@pytest.fixture
def warning_logs_only() -> Iterator[None]:
    """The CLI's default log level, so a flood is filtered as it is for users (an
    unconfigured structlog prints every line, which only measures the printing)."""
    saved = structlog.get_config()
    configure_logging("warning")
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.usefixtures("warning_logs_only")
async def test_stderr_is_drained_while_stdout_is_busy() -> None:
    # 16 MiB on stderr before the first result: 256 times a pipe's buffer. Without a
    # concurrent stderr reader the fake blocks on stderr and never answers.
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(stderr_flood_mb=16))
            async with WorkerPool(1, launcher=launcher) as pool:
                assert await run_all(pool, chunks(3)) == expected_inside(3)


async def test_worker_json_logs_are_reemitted_with_the_worker_bound() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour())
            with capture_logs() as logs:
                async with WorkerPool(2, launcher=launcher):
                    pass
            started = [e for e in logs if e["event"] == f"worker {e.get('worker')}: fake worker started"]
            assert {(e["worker"], e["pid"]) for e in started} == {
                (p.index, p.pid) for p in launcher.launched
            }
            assert all(e["log_level"] == "info" for e in started)


async def test_using_a_closed_pool_is_a_clear_error() -> None:
    async with trio.open_nursery() as nursery:
        pool = WorkerPool(1, launcher=fake_launcher(nursery, FakeBehaviour()))
        with pytest.raises(PoolClosed, match="inside 'async with'"):
            await pool.sample(Chunk(SEED, 0, POINTS))
        async with pool:
            pass
        with pytest.raises(PoolClosed):
            await pool.sample(Chunk(SEED, 0, POINTS))


async def test_retire_refuses_a_slot_the_pool_does_not_have() -> None:
    """``retire(-1)`` used to retire the last slot (Python's negative indexing): the
    real worker of slot 1 was stopped. Now it is refused, and both workers still run."""
    with trio.fail_after(300):  # a bound against a hang: real workers start slowly on a busy machine
        async with WorkerPool(2, startup_timeout=300) as pool:
            for slot in (-1, -2, 2):
                with pytest.raises(IndexError, match=rf"no slot {slot}: the pool's slots are 0 to 1"):
                    pool.retire(slot, "a wrong count")
            await pool.ping()  # a retirement is asynchronous: let a wrongly retired worker go
            workers = pool.stats.workers
            assert [w.state for w in workers] == ["ready", "ready"] and pool.stats.retired == 0
            assert still_running(w.pid for w in workers if w.pid is not None) == [w.pid for w in workers]


async def _never_launched(index: int) -> WorkerProcess:
    raise AssertionError(f"slot {index} was launched")


def test_pool_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        WorkerPool(0)
    with pytest.raises(ValueError, match="either command or launcher"):
        WorkerPool(1, ["x"], launcher=_never_launched)


# A scripted peer rather than a fake worker: the test itself decides the exact bytes
# and their order, which no worker (fake or real) would do on its own.


class _ScriptedProcess:
    """The coordinator's view of a process whose other ends the test holds."""

    def __init__(self) -> None:
        self.stdin: trio.abc.SendStream | None
        self.stdout: trio.abc.ReceiveStream | None
        self.stderr: trio.abc.ReceiveStream | None
        self.stdin, self.peer_stdin = trio.testing.memory_stream_one_way_pair()
        self.peer_stdout, self.stdout = trio.testing.memory_stream_one_way_pair()
        self.peer_stderr, self.stderr = trio.testing.memory_stream_one_way_pair()
        self.pid = 4242
        self.returncode: int | None = None
        self._exited = trio.Event()

    async def wait_exited(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    async def wait(self) -> int:
        return await self.wait_exited()

    def exit(self, code: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = code
        self._exited.set()
        self.peer_stdout.close()  # a dead process's pipes end
        self.peer_stderr.close()

    def terminate(self) -> None:
        self.exit(-signal.SIGTERM)

    def kill(self) -> None:
        self.exit(-signal.SIGKILL)


async def _read_messages(stream: trio.abc.ReceiveStream, n: int) -> list[protocol.Message]:
    decoder = protocol.FrameDecoder(protocol.COORDINATOR_MESSAGES)
    messages: list[protocol.Message] = []
    while len(messages) < n:
        decoder.feed(await stream.receive_some())
        while (message := decoder.next_message()) is not protocol.NEED_DATA:
            messages.append(message)
    return messages


async def test_out_of_order_responses_are_matched_by_id() -> None:
    process = _ScriptedProcess()

    async def peer() -> None:
        [hello] = await _read_messages(process.peer_stdin, 1)
        assert isinstance(hello, protocol.Hello)
        welcome = protocol.Welcome(1, "scripted", process.pid, "here", ("numpy",), 2, protocol.MAX_FRAME, 10**6)
        await process.peer_stdout.send_all(protocol.encode(welcome))
        first, second = await _read_messages(process.peer_stdin, 2)
        assert isinstance(first, protocol.Sample) and isinstance(second, protocol.Sample)
        # Answer the second request first, both in one write, with made-up counts.
        await process.peer_stdout.send_all(
            protocol.encode(protocol.Result(second.id, 222, second.points, 0.5))
            + protocol.encode(protocol.Result(first.id, 111, first.points, 0.5))
        )
        [shutdown] = await _read_messages(process.peer_stdin, 1)
        assert isinstance(shutdown, protocol.Shutdown)
        process.exit(0)

    async def launch(index: int) -> _ScriptedProcess:
        return process

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer)
            async with WorkerPool(1, launcher=launch) as pool:
                answers: dict[int, int] = {}

                async def one(stream: int) -> None:
                    answers[stream] = (await pool.sample(Chunk(SEED, stream, 1000 + stream))).inside

                async with trio.open_nursery() as requests:
                    requests.start_soon(one, 0)
                    await trio.testing.wait_all_tasks_blocked()
                    requests.start_soon(one, 1)
            assert answers == {0: 111, 1: 222}
            assert process.returncode == 0


async def test_a_response_to_an_unknown_id_fails_the_worker_not_the_caller() -> None:
    process = _ScriptedProcess()
    replacement: bool | None = None

    async def peer() -> None:
        await _read_messages(process.peer_stdin, 1)
        welcome = protocol.Welcome(1, "scripted", process.pid, "here", ("numpy",), 2, protocol.MAX_FRAME, 10**6)
        await process.peer_stdout.send_all(protocol.encode(welcome))
        await _read_messages(process.peer_stdin, 1)
        await process.peer_stdout.send_all(protocol.encode(protocol.Result(999, 1, 1000, 0.0)))

    async with trio.open_nursery() as nursery:
        fakes = fake_launcher(nursery, FakeBehaviour())

        async def launch(index: int) -> WorkerProcess:
            nonlocal replacement
            if replacement is None:
                replacement = True
                return process
            return await fakes(index)

        nursery.start_soon(peer)
        with trio.fail_after(10):
            async with WorkerPool(1, launcher=launch) as pool:
                result = await pool.sample(Chunk(SEED, 0, 1000))
                assert result.inside == count_numpy(SEED, 0, 1000)
                assert pool.stats.restarts == 1
        assert process.returncode == -signal.SIGTERM  # a broken worker is stopped at once


def test_structlog_is_left_alone_by_the_library() -> None:
    # Importing and constructing must not configure logging: that is the entry
    # point's job (an application embedding the pool has its own configuration).
    before = structlog.get_config()
    WorkerPool(1)
    assert structlog.get_config() == before
    assert math.isfinite(default_task_timeout(1))


async def test_workers_that_all_die_every_few_requests_lose_nothing(autojump_clock: object) -> None:
    # Every worker, replacements included, dies when starting its 5th request. A
    # retried chunk goes first in line for the next free worker, so no chunk is
    # unlucky often enough to look like a poison chunk.
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(crash_after=4, exit_code=-signal.SIGKILL))
            async with WorkerPool(2, launcher=launcher) as pool:
                assert await run_all(pool, chunks(60)) == expected_inside(60)
                assert pool.stats.restarts >= 10


@pytest.mark.parametrize("through", ["sample", "imap_unordered"])
async def test_a_poison_chunk_fails_with_the_workers_full_story(autojump_clock: object, through: str) -> None:
    # Every worker dies on its first request: the chunk is to blame after 2 workers
    # in a row; the error names the command, the exit status and the stderr tail.
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(crash_after=0, exit_code=7))
            async with WorkerPool(2, launcher=launcher, max_chunk_attempts=2, max_start_attempts=5) as pool:
                with pytest.raises(ChunkFailed) as raised:
                    if through == "sample":
                        await pool.sample(Chunk(SEED, 0, POINTS))
                    else:
                        await run_all(pool, [Chunk(SEED, 0, POINTS)])
            message = str(raised.value)
            assert "failed on 2 workers in a row" in message
            assert "FakeWorkerProcess" in message and "exit code 7" in message
            assert "crashing as asked" in message


async def test_ping_with_the_real_worker() -> None:
    with trio.fail_after(300):  # a bound against a hang: workers start slowly on a busy machine
        async with WorkerPool(2, startup_timeout=PATIENT_START_S) as pool:
            slots = {await pool.ping() for _ in range(20)}
            assert slots <= {0, 1}
            async with trio.open_nursery() as nursery:  # concurrent pings share the lanes
                for _ in range(50):
                    nursery.start_soon(pool.ping)
            assert pool.stats.in_flight == 0 and pool.stats.completed == 0


async def test_the_stall_clock_moves_earlier_for_a_request_with_a_smaller_budget(
    autojump_clock: object,
) -> None:
    # The clock is only ever moved earlier between rings. A large chunk (budget
    # 30 s + 10 s) is answered, then a tiny one (30 s) hangs: it must be caught at
    # 30 s, not at the large chunk's 40 s.
    large, tiny = Chunk(SEED, 0, 10_000_000), Chunk(SEED, 1, 10)
    assert default_task_timeout(large.points) == pytest.approx(40.0)
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, by_launch(FakeBehaviour(hang_after=1), FakeBehaviour()))
            async with WorkerPool(1, launcher=launcher) as pool:
                await pool.sample(large)
                start = trio.current_time()
                assert (await pool.sample(tiny)).inside == count_numpy(SEED, 1, 10)
                assert 30.0 <= trio.current_time() - start < 33.0
                assert pool.stats.restarts == 1


async def test_a_chunk_can_avoid_slots_and_a_retired_slot_is_never_restarted(autojump_clock: object) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, by_slot({2: FakeBehaviour(slow=50.0)}))
            async with WorkerPool(3, launcher=launcher) as pool:
                elsewhere = await pool.sample(Chunk(SEED, 0, POINTS), avoid={0, 1, 2} - {1})
                assert elsewhere.slot == 1 and elsewhere.host is not None

                async def on_slot_2() -> None:
                    with pytest.raises(RequestFailed, match=r"avoided \(slots \[0, 1\]\)"):
                        await pool.sample(Chunk(SEED, 1, POINTS), avoid={0, 1})

                with capture_logs() as logs:
                    async with trio.open_nursery() as waiting:
                        waiting.start_soon(on_slot_2)
                        await until(lambda: pool.stats.in_flight == 1)
                        pool.retire(2, "gave a wrong count")
                        # Its chunk in flight could only go to slot 2: it fails, once, clearly.
                await until(lambda: pool.stats.workers[2].state == "retired")
                retired = [e for e in logs if e["event"] == "worker_retired"]
                assert retired and retired[0]["log_level"] == "warning"
                assert retired[0]["reason"] == "gave a wrong count"
                assert len(launcher.launches_for(2)) == 1  # never restarted
                with pytest.raises(RequestFailed, match="avoided"):
                    await pool.sample(Chunk(SEED, 2, POINTS), avoid={0, 1})
                result = await pool.sample(Chunk(SEED, 2, POINTS))
                assert result.slot in (0, 1) and result.inside == count_numpy(SEED, 2, POINTS)
                assert pool.stats.retired == 1


async def test_stats_say_which_start_a_slot_is_on_and_for_how_long(autojump_clock: object) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            failing = FakeBehaviour(exit_at_start=True, exit_code=3)
            launcher = fake_launcher(nursery, by_slot({1: failing}, launches=2))
            async with WorkerPool(2, launcher=launcher, backoff_s=1.0) as pool:
                worker = pool.stats.workers[1]
                assert (worker.state, worker.attempt) == ("ready", 3)  # two failed starts first
                assert pool.stats.workers[0].attempt == 1
                await trio.sleep(5.0)
                assert pool.stats.workers[1].state_s == pytest.approx(5.0, abs=0.01)
