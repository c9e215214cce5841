"""Bounded local fleets that still clean up.

- The cap on ``--workers`` (``launch.capacity``), from injected machine limits.
- Starting in turn: the pool's ``max_starting`` and ``starting_limits``, with fakes
  on Trio's autojump clock.
- With real processes, checked in the process table (psutil): a worker whose parent
  dies while it is still importing exits (the backstop is armed before the imports);
  ``mcpi estimate`` under a small, real open-file limit refuses one worker more than
  its cap with one line, runs exactly at the cap, and at the cap leaves nothing
  behind after Ctrl-C or SIGKILL, with workers still starting or computing.

"Still importing" is made deterministic by a stand-in ``msgpack`` package (the first
package from outside the standard library a starting worker imports: NumPy is imported
only when a NumPy path first counts) put first on the worker's ``PYTHONPATH``: it notes
the worker's pid in a directory and then blocks, so the test knows exactly which workers are mid-import when it strikes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import trio
from worker_process import worker_command

from mcpi_coordinator.launch import capacity, remote
from mcpi_coordinator.launch.capacity import (
    FDS_PER_START,
    FDS_PER_WORKER,
    FDS_RESERVED,
    FUSED_WORKER_RSS_BYTES,
    WORKER_RSS_BYTES,
    MachineLimits,
    check_fleet,
    default_max_starting,
    fleet_cap,
)
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import FakeWorkerProcess, fake_launcher
from mcpi_coordinator.testing.processes import still_running, wait_until_gone
from mcpi_worker.kernels import count_numpy

MiB = 2**20
SETUP_TIMEOUT_S = 90.0
"""Generous: CI is a loaded 2-core machine, and a dozen workers start there."""
# Bounds against a hang, not claims of speed: on a loaded 2-core CI machine a dozen
# processes can take seconds to be scheduled and reaped, and a test must wait for the
# event itself. How fast cleanup really is, is measured in benchmarks/fleet.py (cleanup).
SIGKILL_DEADLINE_S = 60.0
CTRL_C_DEADLINE_S = 60.0

# ------------------------------------------------------------------ the cap, worked out


def limits(files: int, memory_mib: int | None) -> MachineLimits:
    return MachineLimits(files, files, None if memory_mib is None else memory_mib * MiB)


def test_the_open_file_limit_caps_the_fleet() -> None:
    files = FDS_RESERVED + 4 * FDS_PER_START + 100 * FDS_PER_WORKER
    cap = fleet_cap(limits(files, None), max_starting=4)
    assert (cap.local, cap.by_files, cap.by_memory) == (100, 100, None)
    assert fleet_cap(limits(files - 1, None), max_starting=4).local == 99
    # Each worker spawned at once holds FDS_PER_START more while it starts.
    fewer = -(-FDS_PER_START // FDS_PER_WORKER)  # workers' worth of descriptors one more start holds
    assert fleet_cap(limits(files, None), max_starting=5).local == 100 - fewer
    # ssh clients are processes of ours too: they take from the same descriptors.
    assert fleet_cap(limits(files, None), remote=30, max_starting=4).local == 70


def test_memory_caps_the_fleet_when_it_runs_out_first() -> None:
    plenty = 10**6
    cap = fleet_cap(limits(plenty, 10 * WORKER_RSS_BYTES // MiB + 1), max_starting=4)
    assert (cap.local, cap.by_memory) == (10, 10)
    assert fleet_cap(limits(plenty, 0), max_starting=4).local == 0


def test_refusal_is_one_line_naming_the_cap_and_why() -> None:
    files = FDS_RESERVED + 4 * FDS_PER_START + 50 * FDS_PER_WORKER
    machine = limits(files, 96 * 48)
    assert check_fleet(50, 0, machine, max_starting=4) is None
    problem = check_fleet(51, 0, machine, max_starting=4)
    assert problem is not None and "\n" not in problem
    assert problem.startswith("--workers 51 is more than this machine can hold: at most 50 local workers")
    assert f"open-file limit of {files} (ulimit -Hn) holds 50 at {FDS_PER_WORKER} descriptors each" in problem
    assert "memory available holds 96" in problem
    # The binding limit is named first.
    memory_bound = limits(10**6, 20 * 48)
    problem = check_fleet(21, 0, memory_bound, max_starting=4)
    assert problem is not None and "at most 20 local workers (960 MiB of memory available holds 20" in problem
    # Too many ssh connections for the descriptors, whatever --workers says.
    problem = check_fleet(0, 51, machine, max_starting=4)
    assert problem is not None and problem.startswith("51 ssh connections are more than")
    problem = check_fleet(10, 45, machine, max_starting=4)
    assert problem is not None and "beside 45 ssh connections: at most 5 local workers" in problem


def test_memory_available_reads_meminfo_and_a_tighter_cgroup(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   2000000 kB\n")
    cgroups = tmp_path / "cgroup"
    membership = tmp_path / "self-cgroup"
    assert capacity._memory_available(meminfo, cgroups, membership) == 2_000_000 * 1024
    # cgroup v2: memory.max less memory.current, when that is less.
    (cgroups / "job").mkdir(parents=True)
    (cgroups / "job" / "memory.max").write_text(f"{1000 * MiB}\n")
    (cgroups / "job" / "memory.current").write_text(f"{400 * MiB}\n")
    membership.write_text("0::/job\n")
    assert capacity._memory_available(meminfo, cgroups, membership) == 600 * MiB
    (cgroups / "job" / "memory.max").write_text("max\n")
    assert capacity._memory_available(meminfo, cgroups, membership) == 2_000_000 * 1024
    # cgroup v1: the memory controller's own hierarchy.
    (cgroups / "memory" / "box").mkdir(parents=True)
    (cgroups / "memory" / "box" / "memory.limit_in_bytes").write_text(f"{300 * MiB}\n")
    (cgroups / "memory" / "box" / "memory.usage_in_bytes").write_text(f"{100 * MiB}\n")
    membership.write_text("4:memory:/box\n1:cpu:/\n0::/\n")
    assert capacity._memory_available(meminfo, cgroups, membership) == 200 * MiB
    # Nothing readable: the memory is not known, and only descriptors cap the fleet.
    assert capacity._memory_available(tmp_path / "none", tmp_path / "none", tmp_path / "none") is None


def test_a_numpy_kernel_worker_is_counted_as_it_may_grow() -> None:
    assert capacity.worker_memory("python", {}) == WORKER_RSS_BYTES
    assert capacity.worker_memory("numpy", {"MCPI_NUMPY_IMPL": "numpy"}) == WORKER_RSS_BYTES
    # numba is in the test extra: with it, auto (the default) and fused load the loop.
    assert capacity.worker_memory("numpy", {}) == FUSED_WORKER_RSS_BYTES
    assert capacity.worker_memory("numpy", {"MCPI_NUMPY_IMPL": "fused"}) == FUSED_WORKER_RSS_BYTES
    assert capacity.worker_memory("numpy", {"MCPI_NUMPY_IMPL": "bogus"}) == FUSED_WORKER_RSS_BYTES
    plenty = limits(10**6, 1000)
    assert fleet_cap(plenty, worker_bytes=FUSED_WORKER_RSS_BYTES).local == 1000 * MiB // FUSED_WORKER_RSS_BYTES


@pytest.mark.slow
@pytest.mark.parametrize(
    ("implementation", "cache", "counted_for"),
    [
        ("numpy", "warm", WORKER_RSS_BYTES),
        ("fused", "warm", FUSED_WORKER_RSS_BYTES),
        ("fused", "empty", FUSED_WORKER_RSS_BYTES),
    ],
)
def test_the_real_worker_stays_within_the_memory_it_is_counted_for(
    implementation: str, cache: str, counted_for: int, tmp_path: Path
) -> None:
    """The per-worker figures are measurements; a worker that grew past them would
    make the cap a promise the machine cannot keep. An empty numba cache makes the
    worker compile its loops, the first run's (higher) peak."""
    cache_dir = [f"NUMBA_CACHE_DIR={tmp_path}"] if cache == "empty" else []
    command = ["env", f"MCPI_NUMPY_IMPL={implementation}", *cache_dir, *worker_command()]

    async def peak_rss() -> int:
        async with WorkerPool(1, command=command, startup_timeout=60) as pool:
            [worker] = pool.stats.workers
            assert worker.pid is not None
            process = psutil.Process(worker.pid)
            peak = process.memory_info().rss
            for points in (10**5, 10**7, 10**8):
                result = await pool.sample(Chunk(seed=7, stream=0, points=points))
                assert result.inside == count_numpy(7, 0, points)
                peak = max(peak, process.memory_info().rss)
            return peak

    peak = trio.run(peak_rss)
    assert peak <= counted_for, f"a worker ({implementation}) used {peak / MiB:.1f} MiB"


def descriptors_for(pid: int) -> int:
    """How many of this process's descriptors are there for worker ``pid``: each one on a
    pipe or other object the worker has open too, and each pidfd of it (its ``fdinfo``
    names the pid). Read from ``/proc``, so that no descriptor opened or closed meanwhile
    by anything else in this process counts."""
    theirs = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            theirs.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            info = Path(f"/proc/self/fdinfo/{fd}").read_text(encoding="utf-8")
        except OSError:  # the listing's own descriptor, gone by now
            continue
        shared = target in theirs and not target.startswith("/")  # a file both opened is not the worker's
        count += shared or (target == "anon_inode:[pidfd]" and f"Pid:\t{pid}\n" in info)
    return count


@pytest.mark.skipif(not Path("/proc/self/fdinfo").exists(), reason="reads descriptors in /proc")
def test_a_running_worker_costs_the_coordinator_the_descriptors_it_is_counted_for() -> None:
    """``FDS_PER_WORKER`` is a measurement (``benchmarks/fleet.py costs``), and the cap and
    its refusal line are worked out from it: since every local worker is started by
    ``launch.early.spawn`` (23dfd9b), not ``trio.lowlevel.open_process``, there is no
    ``trio.Process`` pidfd beside ``SessionProcess``'s, and each worker cost one descriptor
    less than it was counted for (the cap refused fleets that fit)."""

    async def per_worker() -> list[int]:
        async with WorkerPool(2, command=worker_command(), startup_timeout=60) as pool:
            with trio.fail_after(SETUP_TIMEOUT_S):
                while pool.stats.alive < 2:  # both started and past their handshake
                    await pool.state_changed()
            return [descriptors_for(worker.pid) for worker in pool.stats.workers if worker.pid is not None]

    assert trio.run(per_worker) == [FDS_PER_WORKER] * 2


# ------------------------------------------------------------------ starting in turn


class StartWatch:
    """A launcher around the fakes' that takes 2 (fake) seconds to start a worker, and
    records the most starts in progress at once."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._fakes = fake_launcher(nursery, FakeBehaviour())
        self.starting = 0
        self.peak = 0
        self.launches = 0

    async def __call__(self, index: int) -> FakeWorkerProcess:
        self.starting += 1
        self.launches += 1
        self.peak = max(self.peak, self.starting)
        try:
            await trio.sleep(2.0)
            return await self._fakes(index)
        finally:
            self.starting -= 1


async def test_workers_start_a_few_at_a_time_and_the_startup_timeout_counts_from_their_turn(
    autojump_clock: object,
) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            watch = StartWatch(nursery)
            started = trio.current_time()
            async with WorkerPool(9, launcher=watch, max_starting=3, startup_timeout=3.0) as pool:
                # Three rounds of 2 s: 6 s in all, though each start had only 3 s.
                assert trio.current_time() - started == pytest.approx(6.0, abs=0.1)
                assert [w.state for w in pool.stats.workers] == ["ready"] * 9
                assert (watch.peak, watch.launches, pool.stats.restarts) == (3, 9, 0)
            nursery.cancel_scope.cancel()


async def test_slots_wait_their_turn_as_queued_and_closing_empties_the_line(
    autojump_clock: object,
) -> None:
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            fakes = fake_launcher(nursery, FakeBehaviour(silent=True))  # never welcomes
            pool = WorkerPool(6, launcher=fakes, max_starting=2, startup_timeout=50.0)
            states: list[str] = []

            async def look() -> None:
                await trio.sleep(0.5)
                states.extend(w.state for w in pool.stats.workers)

            nursery.start_soon(look)
            with trio.move_on_after(1.0):
                async with pool:
                    raise AssertionError("no worker ever welcomes")
            assert sorted(states) == ["queued"] * 4 + ["starting"] * 2
            assert len(fakes.launched) == 2  # the four in line never started
            assert [w.state for w in pool.stats.workers] == ["stopped"] * 6
            assert fakes.alive() == []
            nursery.cancel_scope.cancel()


def test_ssh_hosts_get_a_starting_limit_each_and_local_workers_share_one() -> None:
    specs = [remote.parse_host_spec(s) for s in ("a", "alice@a", "a:2222", "b")]
    local = [remote.WorkerSlot(("mcpi-worker",))] * 2
    slots = local + [remote.WorkerSlot(("ssh",), spec) for spec in (specs[0], *specs)]
    limits_ = remote.starting_limits(slots, local=5)
    here, a, a_again, alice_a, a_2222, b = limits_[0], *limits_[2:]
    assert limits_[1] is here and here.total_tokens == 5
    assert a_again is a and alice_a is a  # one sshd, whoever logs in
    assert a_2222 is not a and b is not a
    assert {lim.total_tokens for lim in (a, a_2222, b)} == {remote.MAX_SSH_STARTS_PER_HOST}
    assert remote.concurrent_starts(limits_) == 5 + 3 * remote.MAX_SSH_STARTS_PER_HOST


def test_pool_refuses_inconsistent_starting_options() -> None:
    with pytest.raises(ValueError, match="max_starting must be at least 1"):
        WorkerPool(2, max_starting=0)
    with pytest.raises(ValueError, match="starting_limits has 1 limiters, not 2"):
        WorkerPool(2, starting_limits=[trio.CapacityLimiter(1)])


# ------------------------------------------------------------------ real processes

STUB_MSGPACK = textwrap.dedent(
    """
    # A stand-in for msgpack: the worker importing it says so, then blocks in the import.
    import os, time
    open(os.path.join({directory!r}, str(os.getpid())), "w").close()
    time.sleep(600)
    raise ImportError("the test's stand-in msgpack never finishes importing")
    """
)


class Importing:
    """A worker command whose workers block while importing msgpack, and the directory
    where each notes its pid (``PYTHONPATH`` for the worker alone: ``env`` execs it, so
    its parent is whoever ran the command)."""

    def __init__(self, directory: Path) -> None:
        stub = directory / "stub"
        (stub / "msgpack").mkdir(parents=True)
        self.noted = directory / "importing"
        self.noted.mkdir()
        (stub / "msgpack" / "__init__.py").write_text(STUB_MSGPACK.format(directory=str(self.noted)))
        self.command = ["env", f"PYTHONPATH={stub}", *worker_command()]

    def pids(self) -> list[int]:
        return sorted(int(path.name) for path in self.noted.iterdir())


@pytest.fixture
def importing(tmp_path: Path) -> Iterator[Importing]:
    """Every worker still importing at the end is killed, and fails the test."""
    stand_in = Importing(tmp_path)
    yield stand_in
    left = still_running(stand_in.pids())
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"workers {left} were still importing after the test"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = SETUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# An intermediate parent: starts one worker (stdin held by the test, so only the
# parent-death signal can end it), prints its pid and sleeps.
PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    command, stdin_fd = sys.argv[1:-1], int(sys.argv[-1])
    worker = subprocess.Popen(command, stdin=stdin_fd, stdout=subprocess.DEVNULL, pass_fds=[stdin_fd])
    print(worker.pid, flush=True)
    time.sleep(600)
    """
)


def test_a_worker_whose_parent_dies_while_it_imports_exits(importing: Importing) -> None:
    read_fd, write_fd = os.pipe()
    try:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, *importing.command, str(read_fd)],
            stdout=subprocess.PIPE, text=True, pass_fds=[read_fd],
        )  # fmt: skip
        os.close(read_fd)
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        wait_for(lambda: importing.pids() == [worker], "the worker to be importing msgpack")
        parent.kill()
        parent.wait()
        left, took = wait_until_gone([worker], SIGKILL_DEADLINE_S)
        assert left == [], f"the worker outlived its parent by {took:.2f} s, mid-import"
    finally:
        os.close(write_fd)


def capped_at(workers: int) -> int:
    """An open-file limit that holds exactly ``workers`` local workers for ``mcpi
    estimate`` here (its start-up limit is ``default_max_starting()``)."""
    return FDS_RESERVED + default_max_starting() * FDS_PER_START + workers * FDS_PER_WORKER


CAP = 12
"""A fleet six times CI's cores: enough to crowd it, few enough to start quickly."""

# Runs mcpi under an open-file limit of argv[1] (soft and hard), so that the cap is a
# real limit of the process, not a figure handed to the code under test.
UNDER_LIMIT = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'mcpi_coordinator', *sys.argv[2:]])"
)


class Estimate:
    """``mcpi estimate ARGS`` under the open-file limit ``files``, in a session of its
    own like a shell job (the test signals its group as a terminal would). Every child
    it was seen with is killed at ``close`` if still running."""

    def __init__(self, files: int, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", UNDER_LIMIT, str(files), "estimate", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip
        self.seen: set[int] = set()

    def workers(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return []
        self.seen.update(child.pid for child in found)
        return found

    def busy(self, count: int) -> list[int]:
        """Wait until ``count`` workers compute; their pids."""
        found: list[int] = []

        def all_busy() -> bool:
            try:
                found[:] = [w.pid for w in self.workers() if w.cpu_times().user > 0.5]
            except psutil.NoSuchProcess:
                return False
            return len(found) == count

        wait_for(all_busy, f"{count} busy workers")
        return found

    def close(self) -> None:
        self.workers()
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=30)
        for pid in still_running(self.seen):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def estimating(files: int, *args: str) -> Iterator[Estimate]:
    estimate = Estimate(files, *args)
    try:
        yield estimate
    finally:
        estimate.close()


def test_one_worker_above_the_cap_is_refused_with_one_line() -> None:
    # 100 chunks: every worker asked for could be used, so all of them count.
    args = ["--workers", str(CAP + 1), "--points", "1e6", "--chunk-size", "1e4"]
    with estimating(capped_at(CAP), *args) as estimate:
        out, err = estimate.process.communicate(timeout=60)
        assert estimate.process.returncode == 2, err
        assert out == ""
        [line] = err.splitlines()
        assert line.startswith(
            f"mcpi estimate: error: --workers {CAP + 1} is more than this machine can hold: "
            f"at most {CAP} local workers ("
        )
        assert f"the open-file limit of {capped_at(CAP)} (ulimit -Hn) holds {CAP}" in line


@pytest.mark.slow
def test_exactly_at_the_cap_the_run_completes_with_the_exact_count() -> None:
    """The descriptors counted per worker are what the coordinator really uses: a run
    at the cap under that very limit never runs out of them."""
    points, chunk = 2_400_000, 100_000
    args = ["--workers", str(CAP), "--points", str(points), "--chunk-size", str(chunk),
            "--seed", "5", "--json", "--startup-timeout", "60"]  # fmt: skip
    with estimating(capped_at(CAP), *args) as estimate:
        out, err = estimate.process.communicate(timeout=SETUP_TIMEOUT_S + 60)
        assert estimate.process.returncode == 0, err
    report = json.loads(out)
    assert report["inside"] == sum(count_numpy(5, s, chunk) for s in range(points // chunk))
    assert report["restarts"] == 0 and report["workers"] == CAP
    assert "Too many open files" not in err and "Traceback" not in err


def at_the_cap(*extra: str) -> list[str]:
    """``mcpi estimate`` arguments for a run of ``CAP`` workers that would take hours."""
    return ["--workers", str(CAP), "--points", "1e13", "--chunk-size", "1e9", "--seed", "1",
            "--startup-timeout", "120", *extra]  # fmt: skip


@pytest.mark.slow
def test_at_the_cap_sigkill_while_workers_import_leaves_none(importing: Importing) -> None:
    starting = default_max_starting()
    with estimating(capped_at(CAP), *at_the_cap("--worker-cmd", shlex.join(importing.command))) as estimate:
        wait_for(lambda: len(importing.pids()) == starting, f"{starting} workers importing msgpack")
        estimate.process.kill()
        estimate.process.wait()
        left, took = wait_until_gone(importing.pids(), SIGKILL_DEADLINE_S)
        assert left == [], f"{len(left)} workers mid-import outlived SIGKILLed mcpi by {took:.2f} s"
        # The others were waiting their turn: never started, so nothing to leave behind.
        assert len(importing.pids()) == starting


@pytest.mark.slow
def test_at_the_cap_ctrl_c_while_workers_import_exits_130(importing: Importing) -> None:
    starting = default_max_starting()
    with estimating(capped_at(CAP), *at_the_cap("--worker-cmd", shlex.join(importing.command))) as estimate:
        wait_for(lambda: len(importing.pids()) == starting, f"{starting} workers importing msgpack")
        os.killpg(estimate.process.pid, signal.SIGINT)
        _, err = estimate.process.communicate(timeout=CTRL_C_DEADLINE_S)
        assert estimate.process.returncode == 130, err
        assert "Traceback" not in err
        assert still_running(importing.pids()) == []


@pytest.mark.slow
def test_at_the_cap_sigkill_while_workers_compute_leaves_none() -> None:
    with estimating(capped_at(CAP), *at_the_cap()) as estimate:
        workers = estimate.busy(CAP)
        estimate.process.kill()
        estimate.process.wait()
        left, took = wait_until_gone(workers, SIGKILL_DEADLINE_S)
        assert left == [], f"{len(left)} busy workers outlived SIGKILLed mcpi by {took:.2f} s"


@pytest.mark.slow
def test_at_the_cap_ctrl_c_while_workers_compute_exits_130_and_reaps_them() -> None:
    with estimating(capped_at(CAP), *at_the_cap()) as estimate:
        workers = estimate.busy(CAP)
        os.killpg(estimate.process.pid, signal.SIGINT)
        _, err = estimate.process.communicate(timeout=CTRL_C_DEADLINE_S)
        assert estimate.process.returncode == 130, err
        assert "Traceback" not in err
        assert still_running(workers) == []
