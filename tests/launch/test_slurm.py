"""mcpi through a real Slurm cluster: ``srun`` steps carrying the real ``mcpi-worker``.

The cluster is ``tests/slurm.py``'s: munged, slurmctld and slurmd on 127.0.0.1, one
node with this machine's CPUs. These tests skip only where the Slurm packages (or
root) are missing, and never under ``CI=true``; ``.ci/run`` installs the packages.

Every claim about cleanup is checked where it lives: jobs and steps in ``squeue``,
processes in the process table (found by a marker variable that ``srun`` hands on to
its task with the rest of the environment). The wait bounds are far below what
Slurm's own backstop takes (``InactiveLimit=10`` ends an orphaned job after 25-45 s),
so a test passes only if mcpi cleaned up, not if Slurm eventually did.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from slurm import (
    SlurmCluster,
    daemons_in,
    free_ports,
    processes_with_environment,
    running_cluster,
    worker_path,
)

from mcpi_coordinator.testing.processes import still_running

pytestmark = pytest.mark.slow

SEED = 20240607
POINTS = 4 * 10**7
CHUNK = 10**6
RUN_TIMEOUT_S = 120.0
"""Any one ``mcpi estimate`` here; a generous bound for a loaded 2-core CI box."""

CLEANUP_BOUND_S = 10.0
"""Jobs, steps and workers must be gone this soon after the coordinator stops (they
take 0.1-0.3 s; an orphan that only Slurm's InactiveLimit ends takes 25-45 s)."""

SETUP_TIMEOUT_S = 60.0
MARKER = "MCPI_SLURM_TEST_RUN"
SRUN_WORKER = ("srun", "-N1", "-n1", "--quiet", "-u", "--immediate")
"""The documented way to run a worker as a job of its own (outside an allocation)."""


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    yield from running_cluster()


@pytest.fixture
def cluster(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The session's cluster, with an empty queue before and after each test, so a
    test that fails with jobs still held cannot make the next one wait or be refused
    [P14]."""
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all()


@pytest.fixture
def token() -> str:
    return secrets.token_hex(8)


def mcpi_bin() -> str:
    return str(Path(sys.executable).parent / "mcpi")


def srun_worker_cmd() -> str:
    return shlex.join([*SRUN_WORKER, worker_path()])


def estimate_argv(*extra: str, points: int = POINTS, chunk: int = CHUNK) -> list[str]:
    return [mcpi_bin(), "estimate", "--points", str(points), "--seed", str(SEED),
            "--chunk-size", str(chunk), "--json", *extra]


def run_json(argv: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{shlex.join(argv)} exited {done.returncode}: {done.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def local_inside() -> int:
    """The count of a run on local workers: what every Slurm run must reproduce."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return int(run_json(estimate_argv("--workers", "2"), env)["inside"])


def marked_processes(token: str) -> list[psutil.Process]:
    return processes_with_environment(MARKER, token)


def wait_for_nothing_left(cluster: SlurmCluster, token: str) -> tuple[list[str], list[str]]:
    """Poll until no job and no marked process is left, or ``CLEANUP_BOUND_S`` passes."""
    deadline = time.monotonic() + CLEANUP_BOUND_S
    while True:
        jobs = cluster.jobs()
        processes = [f"{p.pid} {_describe(p)}" for p in marked_processes(token)]
        if (not jobs and not processes) or time.monotonic() > deadline:
            return jobs, processes
        time.sleep(0.05)


def _describe(process: psutil.Process) -> str:
    try:
        return shlex.join(process.cmdline())
    except psutil.Error:
        return "(gone)"


# -- the cluster itself ------------------------------------------------------------


def test_cluster_runs_a_job_and_forwards_stdin(cluster: SlurmCluster) -> None:
    assert cluster.node_state() == "idle"
    assert cluster.run("srun", "-N1", "-n1", "--quiet", "hostname").stdout.strip() == cluster.node
    echo = [sys.executable, "-c", "import sys; print(sys.stdin.read(), end='')"]
    assert cluster.run("srun", "-N1", "-n1", "--quiet", *echo, input="hello\n").stdout == "hello\n"
    assert cluster.wait_for_empty_queue(CLEANUP_BOUND_S) == []


def test_a_port_taken_after_the_check_moves_the_cluster_to_free_ones(slurm_cluster: SlurmCluster) -> None:
    """A port bound (not yet listening) by someone else passes the /proc/net/tcp
    check, then fails slurmctld's bind: the cluster starts again on other ports."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        taken = int(squatter.getsockname()[1])
        second = SlurmCluster(slurm_cluster.programs, ports=(taken, free_ports()[1]))
        try:
            second.start()
            assert taken not in second.ports
            assert second.run("srun", "-N1", "-n1", "--quiet", "hostname").stdout.strip() == second.node
        finally:
            second.stop()
    assert not second.dir.exists()


ABANDONING = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from slurm import SlurmCluster
    cluster = SlurmCluster()
    cluster.start()
    print(cluster.dir, flush=True)
    time.sleep(600)
    """
)


def test_a_cluster_whose_starter_was_killed_is_torn_down_by_the_next(slurm_cluster: SlurmCluster) -> None:
    starter = subprocess.Popen([sys.executable, "-c", ABANDONING.format(tests=str(Path(__file__).parents[1]))],
                               stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert starter.stdout is not None
        abandoned = Path(starter.stdout.readline().strip())
        daemons = [int(d.pid_file.read_text()) for d in daemons_in(abandoned)]
        assert still_running(daemons) == daemons
    finally:
        starter.kill()  # no teardown runs: the daemons are left behind
        starter.wait(timeout=30)
        assert starter.stdout is not None
        starter.stdout.close()
    assert still_running(daemons) == daemons
    successor = SlurmCluster(slurm_cluster.programs)
    try:
        successor.start()
        assert still_running(daemons) == []
        assert not abandoned.exists()
    finally:
        successor.stop()


FRAME_ECHO = textwrap.dedent(
    """
    import os, struct
    def exactly(n):
        data = b""
        while len(data) < n:
            more = os.read(0, n - len(data))
            if not more:
                raise SystemExit(0)
            data += more
        return data
    while True:
        header = exactly(4)
        payload = exactly(struct.unpack(">I", header)[0])
        os.write(1, header + payload)
    """
)


def _read_exactly(fd: int, count: int, deadline: float) -> bytes:
    data = b""
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"only {len(data)} of {count} bytes arrived in time")
        more = os.read(fd, count - len(data))
        if not more:
            raise AssertionError(f"end of output after {len(data)} of {count} bytes")
        data += more
    return data


def test_binary_frames_pass_srun_unbuffered_byte_for_byte(cluster: SlurmCluster) -> None:
    """Length-prefixed frames with every byte value, none with a newline, and sizes
    around the buffer boundaries, each echoed back whole and on time: what ``-u``
    buys (without it a frame without 0x0a is held until end of file)."""
    no_newline = bytes(b for b in range(256) if b != 0x0A)
    frames = [no_newline, b"\x00", b"", b"\r\x03\x04\x1a\x13\x11\xff", bytes(range(256)), b"\n"]
    frames += [(no_newline * (n // 255 + 1))[:n] for n in (1023, 1024, 4097, 65536, 1 << 20)]
    process = subprocess.Popen(
        [cluster.programs["srun"], *SRUN_WORKER[1:], sys.executable, "-c", FRAME_ECHO],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env(),
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        for frame in frames:
            process.stdin.write(struct.pack(">I", len(frame)) + frame)
            process.stdin.flush()
            deadline = time.monotonic() + 20.0
            echoed = _read_exactly(process.stdout.fileno(), 4 + len(frame), deadline)
            assert echoed == struct.pack(">I", len(frame)) + frame
        process.stdin.close()
        assert process.wait(timeout=30) == 0  # end of file reaches the task
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        process.stdout.close()
        assert process.stderr is not None
        process.stderr.close()


# -- mcpi through srun ---------------------------------------------------------------


def test_estimate_through_srun_gives_the_local_count(cluster: SlurmCluster, local_inside: int) -> None:
    result = run_json(estimate_argv("--workers", "2", "--worker-cmd", srun_worker_cmd()), cluster.env())
    assert result["inside"] == local_inside
    assert result["points"] == POINTS
    assert {host["name"] for host in result["hosts"]} == {cluster.node}  # the pid is the task's
    assert cluster.wait_for_empty_queue(CLEANUP_BOUND_S) == []


def test_more_workers_than_cpus_finish_on_the_cpus_and_leave_no_queue(
    cluster: SlurmCluster, local_inside: int
) -> None:
    """With ``--immediate`` the workers beyond the node's CPUs are refused at once
    and retired, instead of queueing as jobs that outlive the run."""
    workers = cluster.cpus + 3
    result = run_json(estimate_argv("--workers", str(workers), "--worker-cmd", srun_worker_cmd()),
                      cluster.env())
    assert result["inside"] == local_inside
    working = [w for w in result["per_worker"] if w["chunks"] > 0]
    assert 1 <= len(working) <= cluster.cpus
    assert sum(w["points"] for w in result["per_worker"]) == POINTS
    assert cluster.wait_for_empty_queue(CLEANUP_BOUND_S) == []


def _start_busy_estimate(
    cluster: SlurmCluster, token: str, workers: int
) -> tuple[subprocess.Popen[str], list[int]]:
    """A run that would take hours, with every worker task computing a 1e9-point chunk."""
    estimate = subprocess.Popen(
        estimate_argv("--workers", str(workers), "--worker-cmd", srun_worker_cmd(),
                      points=10**13, chunk=10**9),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=cluster.env(**{MARKER: token}),
        start_new_session=True,  # like a shell job: a signal to its group reaches mcpi alone
    )
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    while True:
        tasks = [p for p in marked_processes(token) if _is_busy_task(p)]
        if len(tasks) == workers:
            return estimate, [t.pid for t in tasks]
        if estimate.poll() is not None or time.monotonic() > deadline:
            estimate.kill()
            _, err = estimate.communicate(timeout=RUN_TIMEOUT_S)
            raise AssertionError(
                f"never saw {workers} busy worker tasks ({len(tasks)}); mcpi said: {err[-2000:]}"
            )
        time.sleep(0.05)


def _is_busy_task(process: psutil.Process) -> bool:
    """A worker started by slurmstepd (so it has a step id) that has begun computing."""
    try:
        return "SLURM_STEP_ID" in process.environ() and process.cpu_times().user > 0.3
    except psutil.Error:
        return False


@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_stopping_the_coordinator_leaves_no_job_step_or_worker(
    cluster: SlurmCluster, token: str, how: str
) -> None:
    estimate, tasks = _start_busy_estimate(cluster, token, workers=cluster.cpus)
    assert len(cluster.steps()) == cluster.cpus
    if how == "sigint":
        os.killpg(estimate.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    else:
        estimate.kill()
    _, err = estimate.communicate(timeout=RUN_TIMEOUT_S)
    assert estimate.returncode == (130 if how == "sigint" else -signal.SIGKILL), err[-2000:]
    jobs, processes = wait_for_nothing_left(cluster, token)
    assert jobs == [], f"jobs left {CLEANUP_BOUND_S} s after {how}: {jobs}"
    assert processes == [], f"processes left {CLEANUP_BOUND_S} s after {how}: {processes}"
    assert cluster.steps() == []
    assert still_running(tasks) == []


def test_the_readme_srun_command_puts_worker_i_on_node_i(cluster: SlurmCluster, local_inside: int) -> None:
    """The docs' (docs/remote.md) ``--worker-cmd "srun ... --relative={i} ..."`` inside a one-node
    allocation: worker 0 runs on node 0; worker 1 has no node 1, is refused at once
    and dropped, and the count is the local one."""
    command = f"srun -N1 -n1 --relative={{i}} --quiet -u --immediate --overlap {worker_path()}"
    done = cluster.run("salloc", "-N1", "-n1", f"--cpus-per-task={cluster.cpus}", "--quiet",
                       *estimate_argv("--workers", "2", "--worker-cmd", command),
                       timeout=RUN_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["inside"] == local_inside
    assert [w["state"] for w in result["per_worker"]] == ["ready", "retired"]
    assert "incompatible with count of allocated nodes" in done.stderr
    assert cluster.wait_for_empty_queue(CLEANUP_BOUND_S) == []

def test_estimate_slurm_runs_one_step_per_node_with_all_its_cpus(cluster: SlurmCluster, local_inside: int) -> None:
    """``mcpi estimate --slurm`` inside an allocation: one srun step per node, its worker
    told to run as many jobs as the node has CPUs in the allocation (one connection
    per host), and the local count; nothing left in the queue afterwards."""
    done = cluster.run("salloc", "-N1", "-n1", f"--cpus-per-task={cluster.cpus}", "--quiet",
                       *estimate_argv("--slurm", "--log-level", "info"), timeout=RUN_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["inside"] == local_inside
    assert [(w["state"], w["host"]) for w in result["per_worker"]] == [("ready", cluster.node)]
    assert result["restarts"] == 0
    ready = [line for line in done.stderr.splitlines() if "worker_ready" in line]
    assert len(ready) == 1 and f"jobs={cluster.cpus}" in ready[0], ready
    assert cluster.wait_for_empty_queue(CLEANUP_BOUND_S) == []


def test_estimate_slurm_outside_an_allocation_is_a_usage_error(cluster: SlurmCluster) -> None:
    env = {k: v for k, v in cluster.env().items() if not k.startswith("SLURM_JOB")}
    done = subprocess.run(estimate_argv("--slurm"), check=False, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mcpi estimate: error: --slurm needs a Slurm allocation, but SLURM_JOB_ID is not set: run mcpi "
        "inside one, e.g. salloc -N2 mcpi estimate --slurm, or from an sbatch script (see 'mcpi estimate --help')"
    ]


# -- the --slurm building blocks, inside real allocations ---------------------------

IN_ALLOCATION = textwrap.dedent(
    """
    import json, os, shlex, subprocess, sys
    from mcpi_coordinator.launch.slurm import SlurmError, allocation_nodes, srun_worker_argv
    mcpi, worker, workers, node_override, *estimate_args = sys.argv[1:]
    try:
        nodes = allocation_nodes(os.environ)
    except SlurmError as error:
        print(json.dumps({"error": str(error)}))
        raise SystemExit(0)
    node = nodes[0] if not node_override else type(nodes[0])(node_override, nodes[0].cpus)
    command = srun_worker_argv(node, [worker])
    done = subprocess.run(
        [mcpi, "estimate", "--workers", workers, "--worker-cmd", shlex.join(command), *estimate_args],
        capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL,
    )
    print(json.dumps({
        "nodes": [[n.name, n.cpus] for n in nodes], "command": command,
        "returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr[-3000:],
    }))
    """
)


def in_allocation(cluster: SlurmCluster, tmp_path: Path, how: str, *, workers: int,
                  node_override: str = "") -> dict[str, Any]:
    """Run ``IN_ALLOCATION`` with Slurm's job environment, the way a user would:
    ``salloc CMD``, ``salloc srun CMD`` (mcpi itself inside a step that holds every
    CPU, as with a site's interactive-step salloc), or an ``sbatch`` script."""
    script = tmp_path / "in_allocation.py"
    script.write_text(IN_ALLOCATION)
    command = [sys.executable, str(script), mcpi_bin(), worker_path(), str(workers), node_override,
               *estimate_argv()[2:]]
    shape = ["-N1", "-n1", f"--cpus-per-task={cluster.cpus}"]
    if how == "sbatch":
        batch = tmp_path / "job.sh"
        batch.write_text(f"#!/bin/sh\nexec {shlex.join(command)}\n")
        output = tmp_path / "job.out"
        # Not ``sbatch --wait``: it polls the job's state at growing intervals, which
        # added 8 s of idle waiting to a job that took 2.
        job = cluster.run("sbatch", "--parsable", *shape, f"--output={output}", f"--chdir={tmp_path}",
                          str(batch)).stdout.strip()
        assert cluster.wait_for_empty_queue(RUN_TIMEOUT_S) == [], f"batch job {job} did not end"
        text = output.read_text()
    else:
        if how == "salloc+srun":
            command = [cluster.programs["srun"], *shape, "--quiet", "-u", *command]
        done = cluster.run("salloc", *shape, "--quiet", *command, timeout=RUN_TIMEOUT_S, check=False)
        assert done.returncode == 0, f"{how} exited {done.returncode}: {done.stderr} {done.stdout}"
        text = done.stdout
    assert text.strip(), f"{how} printed nothing\n{cluster.log_tails()}"
    report: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize("how", ["salloc", "salloc+srun", "sbatch"])
def test_building_blocks_inside_an_allocation_give_the_local_count(
    cluster: SlurmCluster, tmp_path: Path, how: str, local_inside: int
) -> None:
    """The node and its CPUs come from the job's environment, and the step command
    built from them runs workers that give the local count. Two steps share the
    node's CPUs at once (``--overlap``), also when mcpi itself is a step holding
    every CPU, where ``--exact`` steps are refused."""
    report = in_allocation(cluster, tmp_path, how, workers=2)
    assert report["nodes"] == [[cluster.node, cluster.cpus]]
    assert report["returncode"] == 0, report["stderr"]
    result = json.loads(report["stdout"])
    assert result["inside"] == local_inside
    assert result["restarts"] == 0, report["stderr"]
    assert cluster.wait_for_empty_queue(CLEANUP_BOUND_S) == []


def test_a_node_outside_the_allocation_fails_the_run_with_one_line(
    cluster: SlurmCluster, tmp_path: Path
) -> None:
    report = in_allocation(cluster, tmp_path, "salloc", workers=1, node_override="not-in-the-allocation")
    assert report["returncode"] == 1
    last_line = report["stderr"].strip().splitlines()[-1]
    assert last_line.startswith("mcpi estimate: error: no worker left") and "not-in-the-allocation" in last_line
    assert cluster.wait_for_empty_queue(CLEANUP_BOUND_S) == []


def test_outside_an_allocation_the_building_blocks_say_so(cluster: SlurmCluster, tmp_path: Path) -> None:
    script = tmp_path / "outside.py"
    script.write_text(IN_ALLOCATION)
    done = subprocess.run([sys.executable, str(script), mcpi_bin(), worker_path(), "1", ""],
                          check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                          env=cluster.env())
    assert done.returncode == 0, done.stderr
    assert "SLURM_JOB_ID is not set" in json.loads(done.stdout)["error"]



# -- the coordinator's own kill path ------------------------------------------------


def test_a_worker_killed_for_missing_its_deadline_leaves_no_job(cluster: SlurmCluster, token: str) -> None:
    """The coordinator's own kill path, through srun. A worker that misses its task
    timeout is killed; a SIGKILL to srun's whole process group also kills srun's
    shepherd, which would have cancelled the job, so the job is orphaned and holds
    its CPU until InactiveLimit ends it 25-45 s later (with Slurm's default of 0,
    never), and every replacement is refused meanwhile. SIGTERM to srun ends the
    step and its job in ~0.06 s."""
    done = subprocess.run(
        estimate_argv("--workers", str(cluster.cpus), "--worker-cmd", srun_worker_cmd(),
                      "--task-timeout", "0.5", points=4 * 10**9, chunk=10**9),
        check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL,
        env=cluster.env(**{MARKER: token}),
    )
    assert done.returncode == 1, done.stderr[-2000:]
    jobs, processes = wait_for_nothing_left(cluster, token)
    assert jobs == [], f"jobs left {CLEANUP_BOUND_S} s after the run failed: {jobs}"
    assert processes == [], f"processes left {CLEANUP_BOUND_S} s after the run failed: {processes}"
