"""Answers that break the rules, and workers that end in awkward ways: each ends that
worker (replaced, its requests sent again), never the run, and never hangs it.

These are regressions: every one of them used to hang ``mcpi estimate`` for ever, crash
the pool, or leave a process behind. Fakes on a mock clock first, then the same
through real processes and the real CLI, with the process table checked.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
from typing import Any

import pytest
import trio
import trio.testing
from command_line import MCPI
from structlog.testing import capture_logs

from mcpi_coordinator.errors import ChunkFailed, RequestFailed
from mcpi_coordinator.launch.local import spawn_worker
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.fake_worker import fake_worker_command
from mcpi_coordinator.testing.inprocess import by_launch, fake_launcher
from mcpi_coordinator.testing.processes import wait_until_gone
from mcpi_worker.kernels import count_numpy

SEED = 7
POINTS = 3_000


def expected(n: int) -> int:
    return sum(count_numpy(SEED, stream, POINTS) for stream in range(n))


async def count_all(pool: WorkerPool, n: int) -> int:
    total = 0
    async with pool.imap_unordered(Chunk(SEED, stream, POINTS) for stream in range(n)) as results:
        async for result in results:
            total += result.inside
    return total


@pytest.mark.parametrize("answer", ["inside", "points", "pong", "nan"])
async def test_a_bad_answer_replaces_the_worker_and_the_chunk_is_counted_elsewhere(
    autojump_clock: trio.abc.Clock, answer: str
) -> None:
    """The request used to be popped from the in-flight table before its answer was
    checked: the worker was replaced, but the chunk was never retried."""
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, by_launch(FakeBehaviour(bad_answer=answer)))
            async with WorkerPool(1, launcher=launcher) as pool:
                assert await count_all(pool, 6) == expected(6)
                assert pool.stats.restarts == 1


@pytest.mark.parametrize("workers", [1, 2, 3])
async def test_a_range_retried_after_a_bad_answer_goes_out_whole(
    autojump_clock: trio.abc.Clock, workers: int
) -> None:
    """Every worker lies once it has answered one request. A retried piece of a range
    used to be split again on the next worker: its first answer went to the front, the
    lie to the rest, which carried the failures along until the run gave up ("failed on
    5 workers in a row"), even on one worker, whose replacement always takes the retry
    first. With several workers a retry may also land second on a live worker and be
    lied about again, so there the run may end with that one clear error instead; it
    never hangs and never counts a lie."""
    liar = FakeBehaviour(bad_answer="inside", misbehave_after=1)
    total, failure, restarts = 0, None, 0
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, liar)
            async with WorkerPool(workers, launcher=launcher, backoff_s=0) as pool:
                try:
                    async with pool.imap_unordered([Chunk(SEED, 0, POINTS, streams=40)]) as results:
                        async for result in results:
                            total += result.inside
                except ChunkFailed as failed:
                    failure = str(failed)
                restarts = pool.stats.restarts
    # Checked out here: an assertion failing inside would only show as the pool's cleanup.
    assert restarts >= 1
    if failure is None:
        assert total == expected(40)
    else:
        assert workers > 1, failure
        assert re.fullmatch(r"chunk \d+ of seed 7 failed on 5 workers in a row; last: .*inside.*", failure), failure


async def test_pings_do_not_hide_a_sample_that_never_ends(autojump_clock: trio.abc.Clock) -> None:
    """Every answer, a pong included, used to move the stall clock: a worker that
    answered pings but sat on a sample was never found out."""
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            stuck = FakeBehaviour(slow=math.inf)  # pings answered, the sample never done
            launcher = fake_launcher(nursery, by_launch(stuck))
            async with WorkerPool(1, launcher=launcher, task_timeout=10.0) as pool:

                async def keep_pinging() -> None:
                    while True:
                        await pool.ping()
                        await trio.sleep(1.0)

                async with trio.open_nursery() as pinging:
                    pinging.start_soon(keep_pinging)
                    started = trio.current_time()
                    result = await pool.sample(Chunk(SEED, 0, POINTS))
                    waited = trio.current_time() - started
                    pinging.cancel_scope.cancel()
                assert result.inside == count_numpy(SEED, 0, POINTS)
                assert 10.0 <= waited < 12.0  # the task timeout, then the replacement
                assert pool.stats.restarts == 1


async def test_a_thousand_requests_for_a_kernel_nobody_offers_fail_one_by_one() -> None:
    """They used to wait behind a slow valid sample and, when its lane freed, refuse
    each other recursively: RecursionError, and the pool died."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(kernels=("numpy",), slow=0.05))
            async with WorkerPool(1, launcher=launcher, pipeline_depth=1) as pool:
                failures: list[RequestFailed] = []

                async def doomed(stream: int) -> None:
                    with pytest.raises(RequestFailed) as raised:
                        await pool.sample(Chunk(SEED, stream, POINTS, kernel="python"))
                    failures.append(raised.value)

                async with trio.open_nursery() as callers:
                    callers.start_soon(pool.sample, Chunk(SEED, 0, POINTS))  # holds the lane
                    for stream in range(1000):
                        callers.start_soon(doomed, stream)
                assert len(failures) == 1000
                assert "no worker offers kernel 'python'" in str(failures[0])
                assert (await pool.sample(Chunk(SEED, 1, POINTS))).inside == count_numpy(SEED, 1, POINTS)


# ------------------------------------------------------------- real processes and the CLI


def _left_children(stderr: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"left a child (\d+)", stderr)]


@pytest.mark.slow
async def test_a_worker_that_exits_leaving_a_child_on_its_pipes_is_replaced_at_once() -> None:
    """Death was noticed only through stdout EOF: a child holding the pipe hid it until
    the task timeout (30 s, nothing logged), and that child outlived mcpi."""
    leaving = FakeBehaviour(crash_after=1, exit_code=5, leave_child=True)
    commands = iter([fake_worker_command(leaving)])
    pids: list[int] = []

    async def launch(index: int) -> Any:
        command = next(commands, None) or fake_worker_command(FakeBehaviour())
        process = await spawn_worker(command)
        pids.append(process.pid)
        return process

    with capture_logs() as logs, trio.fail_after(20):  # under the 30 s task timeout it took
        async with WorkerPool(1, launcher=launch) as pool:
            assert await count_all(pool, 4) == expected(4)
            assert pool.stats.restarts == 1
    [failed] = [e for e in logs if e["event"] == "worker_failed"]
    assert "exited (exit code 5)" in failed["reason"]
    # The child it left is gone too: it was in the worker's process group, killed with
    # it before the worker was reaped (while that group id could not be reused).
    children = _left_children(failed["reason"])
    assert children, "the fake did not report the child it left"
    still, _ = wait_until_gone(children + pids, timeout_s=5.0)
    assert still == []


def _estimate_json(behaviour: FakeBehaviour, *options: str) -> Any:
    """``mcpi estimate --json``'s result over one fake worker behaving so (2e5 points in 10
    chunks, and ``options``), checked to be JSON: no NaN nor Infinity, which ``json.dumps``
    prints."""
    fake = shlex.join(fake_worker_command(behaviour))
    completed = subprocess.run(
        [*MCPI, "estimate", "--points", "2e5", "--chunk-size", "2e4", "--seed", str(SEED),
         "--workers", "1", "--worker-cmd", fake, "--json", *options],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    def refuse(constant: str) -> None:
        raise AssertionError(f"--json printed {constant}, which is not JSON")

    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout, parse_constant=refuse)


@pytest.mark.slow
def test_json_stays_json_when_a_worker_reports_nan() -> None:
    """``"busy_s": NaN`` used to reach --json. A NaN ``elapsed_s`` now breaks the
    protocol: that worker is replaced (each one here lies after one honest answer)."""
    result = _estimate_json(FakeBehaviour(bad_answer="nan", misbehave_after=1))
    assert result["inside"] == sum(count_numpy(SEED, s, 20_000) for s in range(10))
    assert result["restarts"] >= 1


@pytest.mark.slow
def test_a_worker_claiming_a_huge_kernel_time_is_believed_no_further_than_the_coordinator_saw() -> None:
    """A finite ``elapsed_s`` near the float maximum breaks no rule (it is informational),
    so the worker is kept; two such answers added up made its ``busy_s`` infinite, and
    ``--json`` printed ``Infinity``. Each claim is cut to the time since its request was
    sent, so a slot's busy seconds stay within the run's while it has one request in flight
    at a time (with more, the times since each was sent overlap, and on a loaded machine
    their sum passed the run's elapsed time)."""
    result = _estimate_json(FakeBehaviour(claimed_elapsed_s=1.5e308), "--pipeline-depth", "1")
    assert result["inside"] == sum(count_numpy(SEED, s, 20_000) for s in range(10))
    [worker] = result["per_worker"]
    assert result["restarts"] == 0 and worker["chunks"] == 10
    assert 0 <= worker["busy_s"] <= result["elapsed_s"]


@pytest.mark.slow
@pytest.mark.parametrize("answer", ["inside", "points", "pong"])
def test_the_cli_finishes_exact_when_the_first_worker_answers_badly(answer: str) -> None:
    """Through the real CLI, where the run used to hang for ever: every worker lies once
    it has answered one chunk, is replaced, and the run still ends exact."""
    fake = shlex.join(fake_worker_command(FakeBehaviour(bad_answer=answer, misbehave_after=1)))
    completed = subprocess.run(
        [*MCPI, "estimate", "--points", "60000", "--chunk-size", "3000", "--seed", str(SEED),
         "--workers", "1", "--worker-cmd", fake, "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # One worker: each replacement takes what its predecessor lied about first (retries
    # go first, and whole), so the run always ends exact; with several, see above.
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert result["inside"] == expected(20)
    assert result["restarts"] >= 1
