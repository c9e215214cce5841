"""The subprocess fake, ``python -m mcpi_coordinator.testing.fake_worker``, as users run it.

Each test starts a real process and watches its pipes and exit status. Timeouts are
generous (CI is a loaded 2-core box); "says nothing for a while" checks use short
real waits, since a subprocess's time cannot be faked.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import psutil
import pytest
import trio

from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.client import open_worker
from mcpi_coordinator.testing.fake_worker import (
    behaviour_from_args,
    behaviour_to_argv,
    build_parser,
    fake_worker_command,
)
from mcpi_worker import kernels
from mcpi_worker.protocol import ErrorCode, FatalProtocolError, Ping, Pong, Result, Sample, Shutdown

SEED = 7
POINTS = 20_000
FAKE = [sys.executable, "-m", "mcpi_coordinator.testing.fake_worker"]


def sample(id: int, points: int = POINTS) -> Sample:
    return Sample(id=id, seed=SEED, stream=id, points=points, kernel="numpy")


def test_help_teaches_every_option_and_bad_arguments_exit_2() -> None:
    shown = subprocess.run([*FAKE, "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0
    for flag in ("--crash-after", "--hang-after", "--garbage", "--oversize", "--slow",
                 "--wrong-id", "--stderr-flood", "--exit-code", "examples:"):
        assert flag in shown.stdout
    bad = subprocess.run([*FAKE, "--crash-after", "-1"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "--crash-after" in bad.stderr
    assert bad.stdout == ""


def test_behaviour_round_trips_through_the_command_line() -> None:
    behaviour = FakeBehaviour(
        crash_after=3, exit_code=-9, garbage=True, misbehave_after=2, slow=0.25,
        stderr_flood_mb=1.5, kernels=("python",), max_inflight=2, ignore_sigterm=True,
        close_stdout_after=4, ignore_cancel=True, stderr_noise=True,
    )
    argv = behaviour_to_argv(behaviour)
    assert behaviour_from_args(build_parser().parse_args(argv)) == behaviour
    assert fake_worker_command(behaviour)[:3] == FAKE


async def test_undisturbed_fake_is_a_correct_worker() -> None:
    async with open_worker(fake_worker_command()) as (process, client, _):
        with trio.fail_after(30):
            welcome = await client.handshake()
            assert welcome.pid == process.pid
            await client.send(sample(1), sample(2), Ping(id=3))
            responses = [await client.receive() for _ in range(3)]
            await client.send(Shutdown())
            assert await client.receive_until_eof() == []
            assert await process.wait() == 0
    results = {m.id: m for m in responses if isinstance(m, Result)}
    assert Pong(id=3) in responses
    assert {i: r.inside for i, r in results.items()} == {
        i: kernels.count_numpy(SEED, i, POINTS) for i in (1, 2)
    }


@pytest.mark.parametrize("exit_code", [5, -signal.SIGKILL])
async def test_crash_after_exits_with_the_code_asked(exit_code: int) -> None:
    command = fake_worker_command(FakeBehaviour(crash_after=1, exit_code=exit_code))
    async with open_worker(command) as (process, client, stderr):
        with trio.fail_after(30):
            await client.handshake()
            await client.send(sample(1), sample(2))
            assert [m.id for m in await client.receive_until_eof()] == [1]  # type: ignore[union-attr]
            assert await process.wait() == exit_code
            await stderr.closed.wait()
    if exit_code > 0:
        assert "crashing as asked" in stderr.text


async def test_hang_after_is_deaf_to_eof_and_needs_a_signal() -> None:
    async with open_worker(fake_worker_command(FakeBehaviour(hang_after=0))) as (process, client, _):
        with trio.fail_after(30):
            await client.handshake()
            await client.send(sample(1), Ping(id=2))
            await client.close_stdin()
        with trio.move_on_after(0.5) as waited:
            await process.wait()
        assert waited.cancelled_caught and process.returncode is None
        process.kill()
        with trio.fail_after(30):
            assert await process.wait() == -signal.SIGKILL


async def test_close_stdout_after_lives_on_until_end_of_input() -> None:
    command = fake_worker_command(FakeBehaviour(close_stdout_after=1, stderr_noise=True))
    async with open_worker(command) as (process, client, stderr):
        with trio.fail_after(30):
            await client.handshake()
            await client.send(sample(1), sample(2))
            assert isinstance(await client.receive(), Result)
            assert await client.receive() is None  # stdout closed as sample 2 started
            await client.send(Ping(id=3), sample(4))  # stdin is still read: no broken pipe
            assert process.returncode is None
            await client.close_stdin()
            assert await process.wait() == 0
            await stderr.closed.wait()
    assert "closing stdout as asked" in stderr.text
    assert "(not text, no newline" in stderr.text and "Traceback" not in stderr.text


async def test_ignore_sigterm_survives_terminate() -> None:
    command = fake_worker_command(FakeBehaviour(silent=True, ignore_sigterm=True))
    async with open_worker(command) as (process, client, _stderr):
        with trio.fail_after(30):
            await client.send(Ping(id=1))  # answered "handshake_required": it is up
            assert (await client.receive()).code == ErrorCode.HANDSHAKE_REQUIRED  # type: ignore[union-attr]
        process.terminate()
        with trio.move_on_after(0.5):
            await process.wait()
        assert process.returncode is None
        process.kill()
        with trio.fail_after(30):
            assert await process.wait() == -signal.SIGKILL


async def test_slow_samples_still_answer_ping_first() -> None:
    async with open_worker(fake_worker_command(FakeBehaviour(slow=0.5))) as (_process, client, _):
        with trio.fail_after(30):
            await client.handshake()
            await client.send(sample(1), Ping(id=2))
            first, second = await client.receive(), await client.receive()
    assert first == Pong(id=2)
    assert isinstance(second, Result) and second.elapsed_s == 0.5


@pytest.mark.parametrize(
    ("option", "code"),
    [("garbage", ErrorCode.FRAME_TOO_LARGE), ("oversize", ErrorCode.FRAME_TOO_LARGE),
     ("eof_mid_frame", ErrorCode.TRUNCATED_FRAME)],
)
async def test_stream_faults(option: str, code: ErrorCode) -> None:
    behaviour = FakeBehaviour(misbehave_after=1, exit_code=9, **{option: True})  # type: ignore[arg-type]
    async with open_worker(fake_worker_command(behaviour)) as (process, client, _):
        with trio.fail_after(30):
            await client.handshake()
            await client.send(sample(1), sample(2))
            assert isinstance(await client.receive(), Result)
            with pytest.raises(FatalProtocolError) as caught:
                await client.receive()
            assert caught.value.code == code
            if option == "eof_mid_frame":
                assert await process.wait() == 9


async def test_stderr_flood_is_written_in_full_when_drained() -> None:
    command = fake_worker_command(FakeBehaviour(stderr_flood_mb=20))
    async with open_worker(command) as (process, client, stderr):
        with trio.fail_after(60):
            await client.handshake()
            await client.send(sample(1))
            assert isinstance(await client.receive(), Result)
            await client.close_stdin()
            assert await process.wait() == 0
            await stderr.closed.wait()
    assert stderr.total >= 20 * 2**20


async def test_exit_at_start() -> None:
    command = fake_worker_command(FakeBehaviour(exit_at_start=True, exit_code=4))
    async with open_worker(command) as (process, client, stderr):
        with trio.fail_after(30):
            assert await process.wait() == 4
            assert await client.receive() is None
            await stderr.closed.wait()
    assert "exiting at start" in stderr.text


@pytest.mark.slow
def test_a_hanging_fake_does_not_outlive_its_parent() -> None:
    # The parent starts a silent fake and dies without killing it; the fake notices
    # it was re-parented and exits, so hung fakes never pile up after a test crash.
    parent = textwrap.dedent(
        f"""
        import subprocess
        from mcpi_worker.protocol import Hello, encode
        fake = subprocess.Popen(
            {FAKE + ['--silent']!r},
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        fake.stderr.readline()  # "started": it knows its parent
        fake.stdin.write(encode(Hello(versions=(1,), client="parent")))
        fake.stdin.flush()
        fake.stderr.readline()  # "never answering hello": it hangs now
        print(fake.pid, flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=30)
    pid = int(done.stdout)
    try:
        _gone, alive = psutil.wait_procs([psutil.Process(pid)], timeout=10)
    except psutil.NoSuchProcess:
        return  # already gone
    assert not alive, f"orphaned fake {pid} still running"


def test_the_subprocess_fake_starts_without_trio() -> None:
    # Like mcpi-worker, the fake must start fast and anywhere: no Trio on its import path.
    check = "import sys, mcpi_coordinator.testing.fake_worker; assert 'trio' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True, timeout=30)
