"""Remote workers against a real sshd on 127.0.0.1 (the same machine, reached only
through ssh, with its own host key and client key: see ``tests/sshd.py``).

These tests skip only where OpenSSH is not installed, and say so in the summary;
``.ci/run`` installs it, so CI runs them.
"""

from __future__ import annotations

import json
import secrets
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import command_line
import psutil
import pytest
import trio
from sshd import SshDaemon, free_port, remote_worker_command, require_openssh

from mcpi_coordinator.launch.local import default_worker_command, spawn_worker
from mcpi_coordinator.launch.remote import (
    MAX_SSH_STARTS_PER_HOST,
    WorkerSlot,
    parse_host_spec,
    plan_slots,
    slot_launcher,
    ssh_command,
    starting_limits,
)
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import PoolStats, WorkerPool
from mcpi_worker.kernels import count_numpy

pytestmark = pytest.mark.slow

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
    # A remote worker ends on its own once ssh closes its stdin: wait for that (bounded
    # against a hang), rather than expect it to be gone the moment the pool has closed.
    assert wait_until(lambda: not remote_workers_running(token), 60), remote_workers_running(token)


def remote_workers_running(token: str) -> list[int]:
    """Remote workers carrying ``token``. Not the numba cache-warming process a remote
    worker may start (``python -m mcpi_worker.kernels.warm``): it is no worker, and is
    meant to outlive the session until the cache is warm."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if process.environ().get(MARKER_VARIABLE) == token and WARMER not in (process.info["cmdline"] or []):
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


WARMER = "mcpi_worker.kernels.warm"


def slots_for(
    daemon: SshDaemon, token: str, local: int, remote: int, *, port: int | None = None
) -> list[WorkerSlot]:
    spec = parse_host_spec(f"{daemon.user}@127.0.0.1:{port or daemon.port}*{remote}")
    remote_command = ["env", f"{MARKER_VARIABLE}={token}", remote_worker_command()]
    return plan_slots(local, lambda _: default_worker_command(), [spec], daemon.ssh_options(), remote_command)


def chunks(count: int, points: int) -> list[Chunk]:
    return [Chunk(seed=SEED, stream=stream, points=points) for stream in range(count)]


def expected_inside(work: Sequence[Chunk]) -> int:
    return sum(count_numpy(c.seed, c.stream, c.points) for c in work)


async def run_pool(slots: Sequence[WorkerSlot], work: Sequence[Chunk]) -> tuple[int, PoolStats]:
    inside = 0
    async with WorkerPool(
        len(slots), launcher=slot_launcher(slots, spawn_worker), backoff_s=0.05
    ) as pool, pool.imap_unordered(work) as results:
        async for result in results:
            inside += result.inside
    return inside, pool.stats  # after the block: every slot has stopped or retired


async def test_pool_over_ssh_counts_exactly(sshd: SshDaemon, run_token: str) -> None:
    work = chunks(12, 100_000)
    with trio.fail_after(60):
        inside, stats = await run_pool(slots_for(sshd, run_token, local=1, remote=2), work)
    assert inside == expected_inside(work)
    local, remote = stats.workers  # the host's two workers: one connection, two jobs
    assert [w.state for w in stats.workers] == ["stopped"] * 2
    assert (local.jobs, remote.jobs) == (1, 2)
    assert remote.chunks > 0, "the ssh worker did no work"
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
            ) as pool, pool.imap_unordered(work) as results:
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
                        # Its slot is retired once its retries run out; wait for that
                        # while the pool is open, or the local worker may finish the
                        # run first (on a busy machine) and the slot only be 'stopped'.
                        while pool.stats.workers[1].state != "retired":
                            await trio.sleep(0.05)
            stats = pool.stats
    finally:
        daemon.stop()
    assert stopped_after is not None and stopped_after < len(work)
    assert inside == expected_inside(work)
    local, remote = stats.workers
    assert local.state == "stopped"
    assert remote.state == "retired"
    assert stats.restarts >= 1  # tried again before being retired
    assert sum(w.chunks for w in stats.workers) == len(work)


async def test_unreachable_host_is_retired_and_the_run_completes(run_token: str) -> None:
    require_openssh()
    slots = plan_slots(
        1,
        lambda _: default_worker_command(),
        [parse_host_spec(f"127.0.0.1:{free_port()}*2")],  # nothing listens there
        ["ConnectTimeout=5", "StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"],
        ["env", f"{MARKER_VARIABLE}={run_token}", remote_worker_command()],
    )
    work = chunks(6, 100_000)
    with trio.fail_after(60):
        inside, stats = await run_pool(slots, work)
    assert inside == expected_inside(work)
    assert [w.state for w in stats.workers] == ["stopped", "retired"]
    assert stats.workers[0].chunks == len(work)


# -- the mcpi command, end to end ------------------------------------------------------

CLI_SEED = 424242
CLI_POINTS = ["--points", "2e6", "--chunk-size", "2e5", "--seed", str(CLI_SEED), "--json"]
CLI_CHUNKS = 10


def mcpi(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return command_line.mcpi("estimate", *args, timeout=timeout)


def estimate_json(*args: str) -> dict[str, Any]:
    result = mcpi(*CLI_POINTS, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def local_inside() -> int:
    """The reference: the same run on local workers only."""
    return int(estimate_json("--workers", "2")["inside"])


def accepted_sessions(daemon: SshDaemon) -> int:
    return daemon.log.read_text(errors="replace").count("Accepted publickey")


def test_cli_two_ssh_workers_count_like_a_local_run(sshd: SshDaemon, local_inside: int) -> None:
    sessions_before = accepted_sessions(sshd)
    report = estimate_json("--workers", "0", *sshd.cli_args(workers=2))
    assert report["inside"] == local_inside
    assert report["workers"] == 1  # one connection, its worker computing two at once
    assert accepted_sessions(sshd) - sessions_before == 1  # it really came through sshd
    [host] = report["hosts"]
    assert host["name"] == socket.gethostname()  # the welcome's host, sent over ssh
    assert (host["workers"], host["jobs"]) == (1, 2)
    assert [w["jobs"] for w in report["per_worker"]] == [2]
    assert host["chunks"] == CLI_CHUNKS
    assert host["points"] == report["points"]
    assert host["points_per_s"] > 0


def test_cli_mixes_local_and_ssh_workers(sshd: SshDaemon, local_inside: int) -> None:
    sessions_before = accepted_sessions(sshd)
    report = estimate_json("--workers", "1", *sshd.cli_args(workers=1))
    assert report["inside"] == local_inside
    assert report["workers"] == 2
    assert accepted_sessions(sshd) - sessions_before == 1
    assert [w["host"] for w in report["per_worker"]] == [socket.gethostname()] * 2
    assert sum(w["chunks"] for w in report["per_worker"]) == CLI_CHUNKS


def test_cli_unreachable_host_is_dropped_with_a_warning_and_the_run_completes(
    local_inside: int,
) -> None:
    require_openssh()
    port = free_port()  # nothing listens there: ssh exits 255, "Connection refused"
    result = mcpi(*CLI_POINTS, "--workers", "1", "--host", f"127.0.0.1:{port}*2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["inside"] == local_inside
    assert [w["state"] for w in report["per_worker"]] == ["ready", "retired"]
    # One warning line for the host, not one per worker.
    [warning] = [line for line in result.stderr.splitlines() if "warning" in line]
    assert "worker_retired" in warning and f"host=127.0.0.1:{port}" in warning
    assert f"port {port}: Connection refused" in warning
    assert "Traceback" not in result.stderr


def test_cli_no_reachable_worker_exits_1_with_one_clear_line() -> None:
    require_openssh()
    port = free_port()
    result = mcpi(*CLI_POINTS, "--workers", "0", "--host", f"127.0.0.1:{port}")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("mcpi estimate: error:")]
    assert len(errors) == 1 and "no worker left" in errors[0], result.stderr
    assert "Connection refused" in errors[0]
    assert "Traceback" not in result.stderr


def test_cli_host_spec_with_shell_metacharacters_is_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    for spec in [f"127.0.0.1;touch {marker}", f"$(touch {marker})", f"`touch {marker}`"]:
        result = mcpi(*CLI_POINTS, "--workers", "0", "--host", spec)
        assert result.returncode == 2
        assert "invalid host spec" in result.stderr and "is not allowed" in result.stderr
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(f"# ok so far\nlocalhost\nnode2|touch {marker}\n")
    result = mcpi(*CLI_POINTS, "--workers", "0", "--hosts-file", str(hosts_file))
    assert result.returncode == 2
    assert f"{hosts_file}:3: invalid host spec" in result.stderr
    assert not marker.exists()


def test_cli_remote_command_metacharacters_reach_the_remote_shell_inertly(
    sshd: SshDaemon, tmp_path: Path, local_inside: int
) -> None:
    """``$(...)``, ``;`` and backquotes in --remote-cmd arrive as plain words on the
    remote side: the worker still runs (the words are an env assignment's value) and
    nothing else is executed there."""
    marker = tmp_path / "injected"
    hostile = f"INERT=$(touch {marker});`touch {marker}`"
    args = sshd.cli_args(workers=1)
    args[args.index("--remote-cmd") + 1] = shlex.join(["env", hostile, remote_worker_command()])
    report = estimate_json("--workers", "0", *args)
    assert report["inside"] == local_inside
    assert not marker.exists()


def test_cli_worker_cmd_index_placeholder_starts_each_worker_with_its_index(
    tmp_path: Path, local_inside: int
) -> None:
    """The generic launcher (what srun and kubectl recipes use): {i} is the worker index."""
    started = tmp_path / "started"
    wrapper = tmp_path / "launch-worker"
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {started}\nexec {remote_worker_command()}\n')
    wrapper.chmod(0o755)
    report = estimate_json("--workers", "3", "--worker-cmd", f"{wrapper} mcpi-{{i}}")
    assert report["inside"] == local_inside
    assert sorted(started.read_text().split()) == ["mcpi-0", "mcpi-1", "mcpi-2"]


def test_cli_host_that_never_answers_is_dropped_after_the_startup_timeout(
    local_inside: int,
) -> None:
    """TCP connects but no SSH banner ever comes (a hung machine, a black-holing
    firewall): the handshake times out, the slot is retried, then dropped."""
    require_openssh()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes connects; nobody ever speaks
        port = silent.getsockname()[1]
        result = mcpi(
            *CLI_POINTS, "--workers", "1", "--startup-timeout", "1",
            "--host", f"127.0.0.1:{port}",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["inside"] == local_inside
    assert [w["state"] for w in report["per_worker"]] == ["ready", "retired"]
    # One warning while it is slow to answer, one when it is dropped; both name the host.
    slow, dropped = [line for line in result.stderr.splitlines() if "warning" in line]
    assert "worker_slow_to_start" in slow and f"host=127.0.0.1:{port}" in slow
    assert f"host=127.0.0.1:{port}" in dropped and "start-up timeout" in dropped


def test_coordinator_killed_leaves_no_ssh_client_or_remote_worker(
    sshd: SshDaemon, run_token: str
) -> None:
    """SIGKILL to mcpi mid-run: the ssh clients see stdin EOF and pass it on, the
    remote workers exit, the sessions close. Checked in the process table."""
    args = sshd.cli_args(workers=2)
    args[args.index("--remote-cmd") + 1] = shlex.join(
        ["env", f"{MARKER_VARIABLE}={run_token}", remote_worker_command()]
    )
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "mcpi_coordinator", "estimate", "--points", "1e12",
         "--seed", "1", "--workers", "0", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_until(lambda: len(remote_workers_running(run_token)) == 1, 60)  # two jobs
        assert ssh_clients_running(run_token), "expected the ssh clients to be running"
    finally:
        coordinator.kill()
        coordinator.wait(timeout=10)
    assert wait_until(lambda: not remote_workers_running(run_token), 60), "remote workers left"
    assert wait_until(lambda: not ssh_clients_running(run_token), 60), "ssh clients left"


def ssh_clients_running(token: str) -> list[int]:
    found = []
    for process in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "ssh" and any(token in word for word in cmdline):
            found.append(process.info["pid"])
    return found


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# -- many connections to one sshd ------------------------------------------------------

FLEET_CONNECTIONS = 24
"""Past sshd's default MaxStartups (10: it refuses unauthenticated connections beyond
that at random, 30% at 10, all at 100). ``--host`` makes one connection per
destination, but several destinations can reach one sshd (other users, aliases), and
each connection to it waits its turn."""


async def test_many_connections_to_one_sshd_start_in_turn_and_none_is_refused(
    sshd: SshDaemon, run_token: str
) -> None:
    spec = parse_host_spec(f"{sshd.user}@127.0.0.1:{sshd.port}")
    command = ssh_command(
        spec, ["env", f"{MARKER_VARIABLE}={run_token}", remote_worker_command()], sshd.ssh_options()
    )
    slots = [WorkerSlot(tuple(command), spec)] * FLEET_CONNECTIONS
    work = chunks(2 * FLEET_CONNECTIONS, 100_000)
    log_before = sshd.log.stat().st_size
    most_starting = 0
    inside = 0
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            pool = WorkerPool(
                len(slots),
                launcher=slot_launcher(slots, spawn_worker),
                starting_limits=starting_limits(slots),
                startup_timeout=60,
                slot_hosts=[spec.name] * len(slots),
            )

            async def count_starting() -> None:
                nonlocal most_starting
                while True:
                    starting = sum(1 for w in pool.stats.workers if w.state == "starting")
                    most_starting = max(most_starting, starting)
                    await trio.sleep(0.01)

            nursery.start_soon(count_starting)
            async with pool, pool.imap_unordered(work) as results:
                async for result in results:
                    inside += result.inside
            stats = pool.stats
            nursery.cancel_scope.cancel()
    assert inside == expected_inside(work)
    assert (stats.restarts, stats.retired) == (0, 0)
    assert [w.state for w in stats.workers] == ["stopped"] * FLEET_CONNECTIONS
    assert 1 <= most_starting <= MAX_SSH_STARTS_PER_HOST
    with open(sshd.log, "rb") as log:
        log.seek(log_before)
        new_lines = log.read().decode(errors="replace")
    assert new_lines.count("Accepted publickey") == FLEET_CONNECTIONS
    assert "MaxStartups" not in new_lines


def test_cli_64_workers_on_one_host_are_one_ssh_connection(sshd: SshDaemon, run_token: str) -> None:
    """``--host 127.0.0.1*64``: one ssh client, one remote ``mcpi-worker --jobs 64``,
    nothing refused or restarted, the count of a local run. (Before: 64 connections at
    once, 37 of them retired with ``kex_exchange_identification``.)"""
    args = sshd.cli_args(workers=64)
    args[args.index("--remote-cmd") + 1] = shlex.join(
        ["env", f"{MARKER_VARIABLE}={run_token}", remote_worker_command()]
    )
    points = ["--points", "4e8", "--chunk-size", "1e6", "--seed", str(CLI_SEED), "--json"]
    sessions_before = accepted_sessions(sshd)
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "mcpi_coordinator", "estimate", "--workers", "0", *points, *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert wait_until(lambda: len(remote_workers_running(run_token)) == 1, 60), "no remote worker"
        clients, workers = ssh_clients_running(run_token), remote_workers_running(run_token)
        out, err = coordinator.communicate(timeout=240)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.communicate()
    assert coordinator.returncode == 0, err
    assert len(clients) == 1 and len(workers) == 1
    report = json.loads(out)
    local = estimate_json_args("--workers", "2", *points)
    assert report["inside"] == local["inside"]
    retired = [w for w in report["per_worker"] if w["state"] == "retired"]
    assert (len(retired), report["restarts"]) == (0, 0)
    [host] = report["hosts"]
    assert (host["workers"], host["jobs"], host["points"]) == (1, 64, 400_000_000)
    assert accepted_sessions(sshd) - sessions_before == 1
    assert "MaxStartups" not in sshd.log_tail(200)


def estimate_json_args(*args: str) -> dict[str, Any]:
    result = mcpi(*args)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))
