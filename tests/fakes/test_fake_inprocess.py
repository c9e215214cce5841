"""The in-process fake worker: a correct worker by default, and each misbehaviour on request.

Each test drives one fake directly with ``WorkerClient`` (which decodes with the real
protocol core) and checks what arrives on the wire and how the "process" ends.
Time-related tests use ``autojump_clock``: the fake sleeps with Trio, so they take no
real time.
"""

from __future__ import annotations

import signal

import pytest
import trio
from running_fake import running_fake as fake

from mcpi_coordinator.testing import (
    FakeBehaviour,
    by_launch,
    by_slot,
    fake_launcher,
    start_fake_worker,
)
from mcpi_coordinator.testing.client import WorkerClient
from mcpi_worker import kernels, protocol
from mcpi_worker.protocol import (
    Cancel,
    Error,
    ErrorCode,
    FatalProtocolError,
    Hello,
    Ping,
    Pong,
    Result,
    Sample,
    Shutdown,
)

SEED = 20240531
POINTS = 10_000


def sample(id: int, stream: int | None = None, points: int = POINTS, kernel: str = "numpy") -> Sample:
    return Sample(id=id, seed=SEED, stream=id if stream is None else stream, points=points, kernel=kernel)


def expected(stream: int, points: int = POINTS, kernel: str = "numpy") -> int:
    return kernels.KERNELS[kernel](SEED, stream, points)


# ------------------------------------------------------------------ a correct worker


async def test_handshake_reports_fake_identity_and_limits() -> None:
    async with fake(FakeBehaviour(max_inflight=3, kernels=("python",))) as (process, client, _):
        with trio.fail_after(5):
            welcome = await client.handshake()
    assert welcome.version == 2
    assert welcome.pid == process.pid
    assert welcome.kernels == ("python",)
    assert welcome.max_inflight == 3
    assert welcome.max_frame == protocol.MAX_FRAME
    assert welcome.worker == "mcpi-fake-worker"


async def test_counts_equal_the_real_kernels_and_responses_match_ids() -> None:
    async with fake() as (_, client, _):
        with trio.fail_after(10):
            await client.handshake()
            await client.send(sample(7), sample(3, kernel="python"), Ping(id=9))
            responses = {m.id: m for m in [await client.receive() for _ in range(3)]}  # type: ignore[union-attr]
    assert responses[9] == Pong(id=9)
    assert isinstance(responses[7], Result) and responses[7].inside == expected(7)
    assert isinstance(responses[3], Result)
    assert responses[3].inside == expected(3, kernel="python")


async def test_per_request_errors_keep_the_worker_serving(autojump_clock: trio.abc.Clock) -> None:
    async with fake(FakeBehaviour(max_inflight=1, slow=1.0)) as (_, client, _):
        with trio.fail_after(10):
            await client.send(Ping(id=1))
            assert await client.receive() == Error(1, ErrorCode.HANDSHAKE_REQUIRED, "send hello first")
            await client.handshake()
            await client.send(sample(2, kernel="fortran"))
            assert (await client.receive()).code == ErrorCode.UNKNOWN_KERNEL  # type: ignore[union-attr]
            await client.send(sample(3), sample(3))
            duplicate = await client.receive()
            assert isinstance(duplicate, Error) and duplicate.code == ErrorCode.DUPLICATE_ID
            await client.send(sample(4))
            busy = await client.receive()
            assert isinstance(busy, Error) and busy.id == 4 and busy.code == ErrorCode.BUSY
            # A valid frame with a bad field, and an unknown op: answered by id.
            await client.send_bytes(_frame({"type": "sample", "id": 5, "seed": -1}))
            assert (await client.receive()).code == ErrorCode.INVALID_REQUEST  # type: ignore[union-attr]
            await client.send_bytes(_frame({"type": "frobnicate", "id": 6}))
            assert (await client.receive()).code == ErrorCode.UNKNOWN_TYPE  # type: ignore[union-attr]
            result = await client.receive()
            assert isinstance(result, Result) and result.id == 3


async def test_cancel_gives_exactly_one_final_response(autojump_clock: trio.abc.Clock) -> None:
    async with fake(FakeBehaviour(slow=10.0)) as (_, client, _):
        with trio.fail_after(100):
            await client.handshake()
            await client.send(sample(1), sample(2), Cancel(id=1), Cancel(id=1), Cancel(id=99))
            assert await client.receive() == Error(1, ErrorCode.CANCELLED, "cancelled")
            start = trio.current_time()
            result = await client.receive()
            # Sample 2 starts when 1 is cancelled, so it is due 10 s later, not 20.
            assert isinstance(result, Result) and result.id == 2
            assert trio.current_time() - start == pytest.approx(10.0)
            await client.send(Cancel(id=2), Shutdown())
            assert await client.receive_until_eof() == []
            assert await client.process.wait() == 0


async def test_shutdown_cancels_outstanding_requests_and_exits_0(autojump_clock: trio.abc.Clock) -> None:
    async with fake(FakeBehaviour(slow=5.0)) as (process, client, _):
        with trio.fail_after(100):
            await client.handshake()
            await client.send(sample(1), sample(2), Shutdown())
            rest = await client.receive_until_eof()
            # The queued one is answered at once, the running one once it has stopped.
            assert [(m.id, m.code) for m in rest] == [  # type: ignore[union-attr]
                (2, ErrorCode.CANCELLED),
                (1, ErrorCode.CANCELLED),
            ]
            assert await process.wait() == 0


async def test_stdin_eof_ends_it_with_0_and_eof_inside_a_frame_with_3() -> None:
    async with fake() as (process, client, stderr):
        with trio.fail_after(5):
            await client.handshake()
            await client.close_stdin()
            assert await client.receive_until_eof() == []
            assert await process.wait() == 0
    async with fake() as (process, client, stderr):
        with trio.fail_after(5):
            await client.send_bytes(protocol.encode(Hello(versions=(1,), client="t"))[:5])
            await client.close_stdin()
            fatal = await client.receive()
            assert isinstance(fatal, Error) and fatal.id is None
            assert fatal.code == ErrorCode.TRUNCATED_FRAME
            assert await process.wait() == 3
            await stderr.closed.wait()
        assert "truncated_frame" in stderr.text


async def test_unsupported_version_and_oversize_request_are_fatal() -> None:
    async with fake() as (process, client, _):
        with trio.fail_after(5):
            await client.send(Hello(versions=(7,), client="t"))
            fatal = await client.receive()
            assert isinstance(fatal, Error) and fatal.code == ErrorCode.UNSUPPORTED_VERSION
            assert await process.wait() == 3
    async with fake() as (process, client, _):
        with trio.fail_after(5):
            await client.send_bytes(b"hell")  # 1.75 GB announced: refused at the header
            fatal = await client.receive()
            assert isinstance(fatal, Error) and fatal.code == ErrorCode.FRAME_TOO_LARGE
            assert await process.wait() == 3


async def test_slow_worker_still_answers_ping_at_once(autojump_clock: trio.abc.Clock) -> None:
    async with fake(FakeBehaviour(slow=30.0)) as (_, client, _):
        with trio.fail_after(100):
            await client.handshake()
            start = trio.current_time()
            await client.send(sample(1), Ping(id=2))
            assert await client.receive() == Pong(id=2)
            assert trio.current_time() == start
            result = await client.receive()
            assert isinstance(result, Result) and result.inside == expected(1)
            assert trio.current_time() - start == pytest.approx(30.0)


# -------------------------------------------------------------------- misbehaviours


@pytest.mark.parametrize("exit_code", [1, 0, -signal.SIGSEGV])
async def test_crash_after_n_results(exit_code: int) -> None:
    async with fake(FakeBehaviour(crash_after=2, exit_code=exit_code)) as (process, client, stderr):
        with trio.fail_after(5):
            await client.handshake()
            await client.send(*(sample(i) for i in range(4)))
            messages = await client.receive_until_eof()
            assert [m.id for m in messages] == [0, 1]  # type: ignore[union-attr]
            assert await process.wait() == exit_code
            with pytest.raises(trio.BrokenResourceError):
                await client.send(Ping(id=9))
            await stderr.closed.wait()
    assert "crash_after=2" in stderr.text


async def test_hang_after_ignores_everything_until_killed(autojump_clock: trio.abc.Clock) -> None:
    async with fake(FakeBehaviour(hang_after=1)) as (process, client, _):
        await client.handshake()
        await client.send(sample(1), sample(2))
        assert isinstance(await client.receive(), Result)
        await client.send(Ping(id=3))
        await client.close_stdin()
        with trio.move_on_after(3600) as waited:
            await client.receive()
        assert waited.cancelled_caught, "a hung fake must not answer, nor exit on EOF"
        assert process.returncode is None
        process.kill()
        with trio.fail_after(1):
            assert await process.wait() == -signal.SIGKILL
            assert await client.receive() is None  # its stdout is closed now


async def test_silent_never_welcomes(autojump_clock: trio.abc.Clock) -> None:
    async with fake(FakeBehaviour(silent=True)) as (process, client, _):
        await client.send(Hello(versions=(1,), client="t"))
        with trio.move_on_after(3600) as waited:
            await client.receive()
        assert waited.cancelled_caught
        process.terminate()
        with trio.fail_after(1):
            assert await process.wait() == -signal.SIGTERM
        assert process.signals == [signal.SIGTERM]


async def test_ignore_sigterm_needs_a_kill(autojump_clock: trio.abc.Clock) -> None:
    async with fake(FakeBehaviour(silent=True, ignore_sigterm=True)) as (process, _client, _):
        process.terminate()
        with trio.move_on_after(60):
            await process.wait()
        assert process.returncode is None
        process.kill()
        with trio.fail_after(1):
            assert await process.wait() == -signal.SIGKILL


async def test_exit_at_start_and_bad_version() -> None:
    async with fake(FakeBehaviour(exit_at_start=True, exit_code=4)) as (process, client, stderr):
        with trio.fail_after(5):
            assert await process.wait() == 4
            assert await client.receive() is None
            await stderr.closed.wait()
        assert "exiting at start" in stderr.text
    async with fake(FakeBehaviour(bad_version=True)) as (_, client, _):
        with trio.fail_after(5):
            await client.send(Hello(versions=(1,), client="t"))
            welcome = await client.receive()
            assert isinstance(welcome, protocol.Welcome) and welcome.version == 99


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        (FakeBehaviour(garbage=True, misbehave_after=1), ErrorCode.FRAME_TOO_LARGE),
        (FakeBehaviour(oversize=True, misbehave_after=1), ErrorCode.FRAME_TOO_LARGE),
        (FakeBehaviour(eof_mid_frame=True, misbehave_after=1), ErrorCode.TRUNCATED_FRAME),
    ],
    ids=["garbage", "oversize", "eof_mid_frame"],
)
async def test_stream_faults_break_a_careful_reader(behaviour: FakeBehaviour, code: ErrorCode) -> None:
    async with fake(behaviour) as (process, client, _):
        with trio.fail_after(5):
            await client.handshake()
            await client.send(sample(1), sample(2))
            first = await client.receive()
            assert isinstance(first, Result) and first.inside == expected(1)
            with pytest.raises(FatalProtocolError) as caught:
                await client.receive()
            assert caught.value.code == code
    if behaviour.eof_mid_frame:
        assert process.returncode == behaviour.exit_code


async def test_wrong_id_answers_an_id_never_sent() -> None:
    async with fake(FakeBehaviour(wrong_id=True)) as (_, client, _):
        with trio.fail_after(5):
            await client.handshake()
            await client.send(sample(5))
            result = await client.receive()
    assert isinstance(result, Result)
    assert result.id == 5 + 2**63
    assert result.inside == expected(5)


async def test_duplicate_id_answers_twice() -> None:
    async with fake(FakeBehaviour(duplicate_id=True, misbehave_after=1)) as (_, client, _):
        with trio.fail_after(5):
            await client.handshake()
            await client.send(sample(1), sample(2))
            ids = [(await client.receive()).id for _ in range(3)]  # type: ignore[union-attr]
    assert ids == [1, 2, 2]


async def test_close_stdout_after_ends_stdout_and_lives_on_until_end_of_input(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with fake(FakeBehaviour(close_stdout_after=1, slow=1.0)) as (process, client, stderr):
        with trio.fail_after(100):
            await client.handshake()
            await client.send(sample(1), sample(2))
            assert isinstance(await client.receive(), Result)
            assert await client.receive() is None  # stdout closed as sample 2 started
            await client.send(Ping(id=3), sample(4))  # stdin is still read
            with trio.move_on_after(60) as waited:
                await process.wait()
            assert waited.cancelled_caught, "it lives on without its stdout"
            await client.close_stdin()
            assert await process.wait() == 0
            await stderr.closed.wait()
    assert "closing stdout as asked" in stderr.text
    assert [m.id for m in process.stats.received if isinstance(m, (Ping, Sample))] == [1, 2, 3, 4]


async def test_ignore_cancel_answers_a_running_sample_with_its_result(autojump_clock: trio.abc.Clock) -> None:
    async with fake(FakeBehaviour(ignore_cancel=True, slow=10.0)) as (_, client, _):
        with trio.fail_after(100):
            await client.handshake()
            await client.send(sample(1), sample(2), Cancel(id=1), Cancel(id=2))
            start = trio.current_time()
            # Sample 2 was only queued: the protocol core answers it "cancelled" at once.
            assert await client.receive() == Error(2, ErrorCode.CANCELLED, "cancelled before it started")
            result = await client.receive()
            assert isinstance(result, Result) and result.id == 1 and result.inside == expected(1)
            assert trio.current_time() - start == pytest.approx(10.0)


async def test_stderr_noise_comes_before_every_result() -> None:
    async with fake(FakeBehaviour(stderr_noise=True)) as (_, client, stderr):
        with trio.fail_after(10):
            await client.handshake()
            await client.send(sample(1), sample(2))
            assert [isinstance(await client.receive(), Result) for _ in range(2)] == [True, True]
            await client.close_stdin()
            await stderr.closed.wait()
    assert stderr.text.count("(not text, no newline") == 2


async def test_internal_errors_are_retryable_then_it_recovers() -> None:
    async with fake(FakeBehaviour(internal_errors=1)) as (_, client, _):
        with trio.fail_after(5):
            await client.handshake()
            await client.send(sample(1))
            error = await client.receive()
            assert isinstance(error, Error) and error.retryable and not error.fatal
            await client.send(sample(1))
            result = await client.receive()
    assert isinstance(result, Result) and result.inside == expected(1)


async def test_stderr_flood_arrives_before_the_first_result() -> None:
    async with fake(FakeBehaviour(stderr_flood_mb=2)) as (_, client, stderr):
        with trio.fail_after(10):
            await client.handshake()
            await client.send(sample(1))
            assert isinstance(await client.receive(), Result)
            assert stderr.total >= 2 * 2**20
            await client.close_stdin()
            await stderr.closed.wait()
    assert "flood" in stderr.text


async def test_undrained_stderr_flood_blocks_the_fake_like_a_real_pipe(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trio.open_nursery() as nursery:
        process = await start_fake_worker(nursery, FakeBehaviour(stderr_flood_mb=1))
        client = WorkerClient(process)
        await client.handshake()
        await client.send(sample(1))
        with trio.move_on_after(3600) as waited:
            await client.receive()
        assert waited.cancelled_caught, "nobody reads stderr, so the 64 KiB pipe stays full"
        process.kill()


async def test_behaviour_options_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown kernels"):
        FakeBehaviour(kernels=("fortran",))
    with pytest.raises(ValueError):
        FakeBehaviour(crash_after=-1)
    assert FakeBehaviour(crash_after=2, slow=0.5).faults == {"crash_after": 2, "slow": 0.5}


# --------------------------------------------------------------------- the launcher


async def test_fake_launcher_records_every_launch_and_chooses_behaviours() -> None:
    async with trio.open_nursery() as nursery:
        launcher = fake_launcher(nursery, by_slot({1: FakeBehaviour(exit_at_start=True)}, launches=2))
        with trio.fail_after(5):
            first = [await launcher(i) for i in range(3)]
            await first[1].wait()
            second = await launcher(1)
            await second.wait()
            third = await launcher(1)
        assert [p.index for p in launcher.launched] == [0, 1, 2, 1, 1]
        assert [p.returncode for p in launcher.launches_for(1)] == [1, 1, None]
        assert launcher.restarts == 2
        assert len({p.pid for p in launcher.launched}) == 5
        assert set(launcher.alive()) == {first[0], first[2], third}
        for process in launcher.alive():
            process.kill()
        assert launcher.alive() == []

    pick = by_launch(FakeBehaviour(silent=True), then=FakeBehaviour(slow=1))
    assert [pick(0).silent, pick(0).silent, pick(5).slow] == [True, False, 1]


def _frame(body: dict[str, object]) -> bytes:
    import msgpack

    payload = msgpack.packb(body)
    return protocol.HEADER.pack(len(payload)) + payload


async def test_a_fake_with_jobs_runs_that_many_at_once_at_its_speed(autojump_clock: trio.abc.Clock) -> None:
    """jobs=2 at 1000 points/s: two 1000-point samples end together after 1 s, a third
    a second later; the welcome says 2 jobs."""
    async with fake(FakeBehaviour(jobs=2, points_per_s=1000.0, max_inflight=3)) as (_, client, _):
        with trio.fail_after(100):
            welcome = await client.handshake()
            assert welcome.jobs == 2
            start = trio.current_time()
            await client.send(sample(1, points=1000), sample(2, points=1000), sample(3, points=1000))
            done = {}
            for _ in range(3):
                answer = await client.receive()
                assert isinstance(answer, Result)
                done[answer.id] = trio.current_time() - start
            assert done == {1: pytest.approx(1.0), 2: pytest.approx(1.0), 3: pytest.approx(2.0)}
