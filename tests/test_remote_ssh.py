"""Remote workers against a real sshd on 127.0.0.1 (the same machine, reached only
through ssh, with its own host key and client key: see ``tests/sshd.py``).

These tests skip only where OpenSSH is not installed, and say so in the summary;
``.ci/run`` installs it, so CI runs them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest
import trio

from mcpi_coordinator.launch import default_worker_command, spawn_worker
from mcpi_coordinator.pool import Chunk, PoolStats, WorkerPool
from mcpi_coordinator.remote import WorkerSlot, parse_host_spec, plan_slots, slot_launcher
from mcpi_worker.kernels import count_numpy
from sshd import SshDaemon, free_port, remote_worker_command, require_openssh

SEED = 20240607
MARKER_VARIABLE = "MCPI_REMOTE_TEST_RUN"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshDaemon]:
    require_openssh()
    daemon = SshDaemon(tmp_path_factory.mktemp("sshd"))
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture
def run_token() -> Iterator[str]:
    """A value put in every remote worker's environment, to find them in the process
    table afterwards: none may be left once the pool has closed."""
    token = secrets.token_hex(8)
    yield token
    assert remote_workers_running(token) == []


def remote_workers_running(token: str) -> list[int]:
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get(MARKER_VARIABLE) == token:
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def slots_for(
    daemon: SshDaemon, token: str, local: int, remote: int, *, port: int | None = None
) -> list[WorkerSlot]:
    spec = parse_host_spec(f"{daemon.user}@127.0.0.1:{port or daemon.port}*{remote}")
    remote_command = ["env", f"{MARKER_VARIABLE}={token}", remote_worker_command()]
    return plan_slots(local, default_worker_command(), [spec], daemon.ssh_options(), remote_command)


def chunks(count: int, points: int) -> list[Chunk]:
    return [Chunk(seed=SEED, stream=stream, points=points) for stream in range(count)]


def expected_inside(work: Sequence[Chunk]) -> int:
    return sum(count_numpy(c.seed, c.stream, c.points) for c in work)


async def run_pool(slots: Sequence[WorkerSlot], work: Sequence[Chunk]) -> tuple[int, PoolStats]:
    inside = 0
    async with WorkerPool(
        len(slots), launcher=slot_launcher(slots, spawn_worker), backoff_s=0.05
    ) as pool:
        async with pool.imap_unordered(work) as results:
            async for result in results:
                inside += result.inside
    return inside, pool.stats  # after the block: every slot has stopped or retired


async def test_pool_over_ssh_counts_exactly(sshd: SshDaemon, run_token: str) -> None:
    work = chunks(12, 100_000)
    with trio.fail_after(60):
        inside, stats = await run_pool(slots_for(sshd, run_token, local=1, remote=2), work)
    assert inside == expected_inside(work)
    remote = stats.workers[1:]
    assert [w.state for w in stats.workers] == ["stopped"] * 3
    assert sum(w.chunks for w in remote) > 0, "the ssh workers did no work"
    assert all(w.host for w in stats.workers)  # from the welcome, through ssh


async def test_sshd_stopped_mid_run_drops_its_workers_and_the_count_stays_exact(
    tmp_path: Path, run_token: str
) -> None:
    daemon = SshDaemon(tmp_path / "sshd", require_openssh())
    daemon.start()
    try:
        slots = slots_for(daemon, run_token, local=1, remote=2)
        work = chunks(40, 2_000_000)
        inside = 0
        stopped_after: int | None = None
        with trio.fail_after(90):
            async with WorkerPool(
                len(slots), launcher=slot_launcher(slots, spawn_worker), backoff_s=0.05
            ) as pool:
                async with pool.imap_unordered(work) as results:
                    done = 0
                    async for result in results:
                        inside += result.inside
                        done += 1
                        if stopped_after is None and result.slot > 0:
                            # A remote worker has answered: the host goes down now,
                            # sessions and their workers with it.
                            stopped_after = done
                            await trio.to_thread.run_sync(daemon.stop)
                            assert remote_workers_running(run_token) == []
            stats = pool.stats
    finally:
        daemon.stop()
    assert stopped_after is not None and stopped_after < len(work)
    assert inside == expected_inside(work)
    local, *remote = stats.workers
    assert local.state == "stopped"
    assert [w.state for w in remote] == ["retired", "retired"]
    assert stats.restarts >= 2  # each remote slot tried again before being retired
    assert sum(w.chunks for w in stats.workers) == len(work)


async def test_unreachable_host_is_retired_and_the_run_completes(run_token: str) -> None:
    require_openssh()
    slots = plan_slots(
        1,
        default_worker_command(),
        [parse_host_spec(f"127.0.0.1:{free_port()}*2")],  # nothing listens there
        ["ConnectTimeout=5", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"],
        ["env", f"{MARKER_VARIABLE}={run_token}", remote_worker_command()],
    )
    work = chunks(6, 100_000)
    with trio.fail_after(60):
        inside, stats = await run_pool(slots, work)
    assert inside == expected_inside(work)
    assert [w.state for w in stats.workers] == ["stopped", "retired", "retired"]
    assert stats.workers[0].chunks == len(work)
