"""A run starts work at its first ready worker and starts no worker it cannot use.

Issue 20, finding 7: ``--workers 200 -n 1e6`` (one chunk) started all 200 workers on 2
cores before sending anything, while a note said 199 would be idle. Counted, not timed:
launches by the fake launcher, starts logged by a real worker command, and the process
table.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from command_line import CLEAN_ENV

from mcpi_coordinator.cli import facts
from mcpi_coordinator.errors import RequestFailed
from mcpi_coordinator.launch import capacity, early
from mcpi_coordinator.launch.transport import WorkerProcess
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import FakeLauncher, fake_launcher
from mcpi_worker.kernels.numpy_impl import count as count_numpy

PYTHON = shlex.quote(sys.executable)


Launch = Callable[[int], Awaitable[WorkerProcess]]


def held_back(launcher: FakeLauncher, slots: set[int], release: trio.Event) -> Launch:
    """``launcher``, with the launches of ``slots`` held until ``release`` is set: workers
    still starting while the test runs."""

    async def launch(index: int) -> WorkerProcess:
        if index in slots:
            await release.wait()
        return await launcher(index)

    return launch


async def test_work_starts_at_the_first_ready_worker() -> None:
    release = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour())
            launch = held_back(launcher, {1, 2}, release)
            async with WorkerPool(3, launcher=launch, wait_for_all=False) as pool:
                result = await pool.sample(Chunk(seed=3, stream=0, points=1000))
                assert result.inside == count_numpy(3, 0, 1000) and result.slot == 0
                assert [w.state for w in pool.stats.workers] == ["ready", "starting", "starting"]
                assert len(launcher.launched) == 1
                release.set()
                # The others join as they come: a batch reaches all three.
                chunks = (Chunk(seed=3, stream=s, points=10) for s in range(30))
                async with pool.imap_unordered(chunks) as results:
                    slots = {r.slot async for r in results}
                assert len(launcher.launched) == 3
            nursery.cancel_scope.cancel()
    assert slots <= {0, 1, 2}


async def test_a_request_the_ready_workers_cannot_serve_waits_for_those_starting() -> None:
    """Slot 0 offers only the python kernel; the numpy sample must wait for slot 1, not
    fail as 'no worker offers it' while slot 1 has not said what it offers."""
    release = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            behaviours = {0: FakeBehaviour(kernels=("python",)), 1: FakeBehaviour()}
            launcher = fake_launcher(nursery, lambda index: behaviours[index])
            async with WorkerPool(2, launcher=held_back(launcher, {1}, release), wait_for_all=False) as pool:
                async with trio.open_nursery() as inner:
                    inner.start_soon(pool.sample, Chunk(seed=3, stream=0, points=100, kernel="numpy"))
                    await trio.testing.wait_all_tasks_blocked()
                    assert pool.stats.completed == 0  # waiting, not failed
                    release.set()
                assert pool.stats.workers[1].chunks == 1
            nursery.cancel_scope.cancel()


async def test_a_request_no_worker_serves_fails_once_every_worker_has_said_so() -> None:
    release = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, FakeBehaviour(kernels=("python",)))
            async with WorkerPool(2, launcher=held_back(launcher, {1}, release), wait_for_all=False) as pool:
                failure: list[RequestFailed] = []

                async def numpy_sample() -> None:
                    try:
                        await pool.sample(Chunk(seed=3, stream=0, points=100, kernel="numpy"))
                    except RequestFailed as error:
                        failure.append(error)

                async with trio.open_nursery() as inner:
                    inner.start_soon(numpy_sample)
                    await trio.testing.wait_all_tasks_blocked()
                    assert not failure
                    release.set()
                assert len(failure) == 1 and "no worker offers kernel 'numpy'" in str(failure[0])
            nursery.cancel_scope.cancel()


@pytest.mark.slow
def test_200_workers_for_one_chunk_start_one(tmp_path: Path) -> None:
    """The issue's command, with a worker command that logs each start: one worker is
    started (not 200), the count is the chunk's, and nothing is left running."""
    starts = tmp_path / "starts"
    command = f"sh -c 'echo {{i}} >> {shlex.quote(str(starts))}; exec {PYTHON} -m mcpi_worker'"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    run = subprocess.run(
        [sys.executable, "-m", "mcpi_coordinator", "estimate", "--workers", "200", "-n", "1e6", "-s", "4",
         "--json", "--startup-timeout", "60", "--worker-cmd", command],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert set(starts.read_text().split()) == {"0"}  # a start that timed out may have been retried
    assert report["workers"] == 1 and report["inside"] == count_numpy(4, 0, 1_000_000)
    assert "note: 1 chunk for 200 workers: starting 1 (199 would be idle)" in run.stderr
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


@pytest.mark.slow
def test_the_workers_a_run_can_use_are_all_started(tmp_path: Path) -> None:
    """Three chunks on five workers: three start; with --verify, one more for the checks."""
    for extra, expected in (((), 3), (("--verify", "1"), 4)):
        starts = tmp_path / f"starts{len(extra)}"
        command = f"sh -c 'echo {{i}} >> {shlex.quote(str(starts))}; exec {PYTHON} -m mcpi_worker'"
        run = subprocess.run(
            [sys.executable, "-m", "mcpi_coordinator", "estimate", "--workers", "5", "-n", "3000",
             "--chunk-size", "1000", "-s", "4", "--json", "--startup-timeout", "60", "--worker-cmd", command,
             *extra],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        # Which slots started (a start that timed out on a busy machine may have been retried).
        assert set(starts.read_text().split()) == {str(i) for i in range(expected)}
        assert json.loads(run.stdout)["inside"] == sum(count_numpy(4, s, 1000) for s in range(3))


# ------------------------------------------------------------------ workers started early


ROOMY = capacity.MachineLimits(open_files_soft=1024, open_files_hard=1 << 20, memory_available=1 << 40)
"""A machine that holds any worker count these tests plan."""

LOGS = {"--log-level": facts.LOG_LEVELS, "--log-format": facts.LOG_FORMATS}
"""The choices ``cli.main`` passes to ``early.start``."""


def planned(argv: list[str], env: dict[str, str] | None = None, cpus: int = 2, **kwargs: Any) -> int:
    return early.plan(argv, {} if env is None else env, cpus=cpus, **{"choices": LOGS, "machine": ROOMY, **kwargs})


def test_only_a_command_line_read_for_certain_starts_workers_early() -> None:
    assert planned(["estimate", "--points", "1000"]) == 1  # one chunk
    assert planned(["estimate", "-n", "1e8", "-s", "3", "--json", "-q"]) == 2
    assert planned(["estimate", "--points=3e7", "--workers=8"], cpus=4) == 3  # three chunks
    assert planned(["estimate"]) == 2  # 1e9 points: every CPU
    assert planned(["estimate", "-w", "1"]) == 1
    assert planned(["estimate", "--chunk-size", "10", "-n", "100", "-w", "64"]) == 2
    # What changes neither which workers start nor how: the start-up timeout the tests
    # give, the logs a timeline is read from (issue 22: they used to start nothing early).
    assert planned(["estimate", "-n", "1e10", "-w", "1", "--log-level", "debug", "--log-format", "json"]) == 1
    assert planned(["estimate", "--startup-timeout", "300", "--task-timeout=2.5", "--max-time", "1e3"]) == 2
    assert planned(["estimate", "--pipeline-depth", "16", "--log-level=info"]) == 2
    assert planned(["estimate"], {"MCPI_LOG_LEVEL": "debug", "MCPI_LOG_FORMAT": "json"}) == 2
    for refused in (
        [],
        ["scatter"],
        ["estimate", "-w", "0"],  # remote workers only
        ["estimate", "--points", "0"],  # a usage error: nothing may start
        ["estimate", "--points", "1.5"],
        ["estimate", "--points"],
        ["estimate", "-n=5"],
        ["estimate", "--seed", str(2**64)],
        ["estimate", "--workers", "1025"],
        ["estimate", "--pipeline-depth", "0"],
        ["estimate", "--startup-timeout", "-1"],
        ["estimate", "--startup-timeout", "inf"],
        ["estimate", "--task-timeout", "0"],
        ["estimate", "--max-time", "soon"],
        ["estimate", "--log-level", "loud"],
        ["estimate", "--log-format", "xml"],
        ["estimate", "--log-level"],
        ["estimate", "--worker-cmd", "x"],
        ["estimate", "--host", "a"],
        ["estimate", "--resume", "f"],
        ["estimate", "--verify", "1"],
        ["estimate", "--kernel", "python"],
        ["estimate", "--help"],
    ):
        assert planned(refused) == 0, refused
    assert planned(["estimate"], {"MCPI_WORKER_CMD": "python -m mcpi_worker"}) == 0
    # The command refuses a name from the environment that is not one of the choices.
    assert planned(["estimate"], {"MCPI_LOG_FORMAT": "xml"}) == 0
    assert planned(["estimate", "--log-format", "json"], {"MCPI_LOG_LEVEL": "loud"}) == 0
    # A caller that passes no choices has the log options read as uncertain.
    assert planned(["estimate", "--log-level", "debug"], choices={}) == 0


@pytest.mark.parametrize(
    ("args", "env", "shown"),
    [
        ([], {}, "warning"),
        (["-q"], {}, "error"),
        (["--quiet", "--log-level", "info"], {}, "info"),
        (["--log-level=debug", "--log-level", "critical"], {}, "critical"),
        ([], {"MCPI_LOG_LEVEL": "info"}, "info"),
        (["--log-level", "error"], {"MCPI_LOG_LEVEL": "debug"}, "error"),
        (["-q"], {"MCPI_LOG_LEVEL": ""}, "error"),
    ],
)
def test_workers_started_early_write_the_lines_the_command_shows(
    args: list[str], env: dict[str, str], shown: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The level ``early`` reads from a command line is the one the command's parser
    reads (``estimate_plan.shown_level``), so that an early worker has the very command
    line the run asks for: ``--log-level warning`` unless the command shows info."""
    from mcpi_coordinator.cli import estimate_plan
    from mcpi_coordinator.cli.main import build_parser

    argv = ["estimate", "-n", "1000", *args]
    assert planned(argv, env) == 1
    for variable in ("MCPI_LOG_LEVEL", "MCPI_LOG_FORMAT"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    parsed = build_parser(argv).parse_args(argv)
    assert early.shown_level(argv, env) == estimate_plan.shown_level(parsed) == shown
    quiet = early.worker_argv(shown)[-2:] == ["--log-level", "warning"]
    assert quiet is (shown not in ("debug", "info"))
    assert early.worker_argv()[-2:] == ["-m", "mcpi_worker"]  # a program's pool: the worker's own default


def test_a_run_the_machine_cannot_hold_starts_nothing_early() -> None:
    """The command refuses more workers than the machine holds (exit 2, one line); early
    counts the run's workers (one per chunk at most) with the command's own figures."""
    worker = capacity.worker_memory("numpy", {})
    small = capacity.MachineLimits(open_files_soft=1024, open_files_hard=1 << 20, memory_available=3 * worker)
    assert planned(["estimate", "-w", "3", "-n", "3e7"], machine=small) == 2  # three fit; two CPUs
    assert planned(["estimate", "-w", "4", "-n", "3e7"], machine=small) == 2  # three chunks: three kept
    assert planned(["estimate", "-w", "4", "-n", "4e7"], machine=small) == 0
    files = capacity.MachineLimits(open_files_soft=64, open_files_hard=capacity.FDS_RESERVED, memory_available=None)
    assert planned(["estimate", "-w", "1"], machine=files) == 0


def test_workers_started_early_and_not_taken_are_killed_and_reaped() -> None:
    started = early.start(["estimate", "-n", "1e9", "-w", "2"], {})
    try:
        pids = [w.process.pid for w in early._started]
        assert started == len(pids) == min(2, os.cpu_count() or 1)
        assert all(psutil.pid_exists(pid) for pid in pids)
    finally:
        early.discard()
    assert not any(psutil.pid_exists(pid) for pid in pids)  # killed, and reaped: no zombie
    assert early.take(early.worker_argv()) is None


def environment_of(pid: int) -> dict[str, str]:
    """Process ``pid``'s environment as it was given at its exec. ``Popen`` returns as soon as
    the kernel lets the parent go on, which is before it has laid out the new program's
    environment (``/proc/PID/environ`` reads empty until then): read until it is there."""
    for _ in range(1_000_000):  # a bound against a hang; the layout takes microseconds
        with open(f"/proc/{pid}/environ", "rb") as environ:
            entries = [entry for entry in environ.read().split(b"\0") if entry]
        if entries:
            break
        os.sched_yield()
    else:
        pytest.fail(f"process {pid} never showed an environment")
    pairs = [entry.partition(b"=") for entry in entries]
    return {name.decode(): value.decode() for name, _, value in pairs}


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the workers' environment in /proc")
@pytest.mark.parametrize(
    "words",
    [
        ["-n", "1000"],  # one chunk: one worker, all of it
        ["-n", "1e9", "-w", "2"],
        ["--points=3e7", "--workers", "8"],  # three chunks: three slots, though at most a CPU each starts early
        ["-n", "1e8", "-w", "3", "--chunk-size", "1e6", "-s", "4", "--json"],
    ],
)
def test_workers_started_early_are_told_the_hint_their_hello_carries(
    words: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """protocol.md §5.1's size hint comes in the ``hello``, which a worker started early gets
    only once the command has imported Trio and the pool: the same hint is in its
    environment (``MCPI_EXPECTED_POINTS``) from its start, so that it can get ready for the
    run's size meanwhile. It is the hint ``cli.estimate`` puts in every hello: the asked
    points over the run's slots, rounded up."""
    from mcpi_coordinator.cli import estimate_plan
    from mcpi_coordinator.cli.main import build_parser

    for variable in ("MCPI_WORKER_CMD", "MCPI_LOG_LEVEL", "MCPI_LOG_FORMAT"):
        monkeypatch.delenv(variable, raising=False)
    argv = ["estimate", *words]
    parsed = build_parser(argv).parse_args(argv)
    assert estimate_plan.check_arguments(parsed, ROOMY) is None
    estimate_plan.drop_unusable_slots(parsed)
    hello_hint = -(-estimate_plan.asked_points(parsed) // len(parsed.slots))  # as cli.estimate._estimate
    started = early.start(argv, {}, choices=LOGS)
    try:
        assert started == min(len(parsed.slots), os.cpu_count() or 1)
        for worker in early._started:
            assert environment_of(worker.process.pid)["MCPI_EXPECTED_POINTS"] == str(hello_hint)
    finally:
        early.discard()


def _pipe_of(pid: int, fd: str) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")  # "pipe:[inode]"


def _our_pipes() -> set[str]:
    pipes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            pipes.add(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # listdir's own, closed by now
            pass
    return pipes


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads the workers' descriptors in /proc")
@pytest.mark.parametrize(
    ("cpus", "workers", "waits"),
    [(2, 2, {1: 0}), (4, 4, {3: 0}), (3, 2, {}), (2, 1, {})],
)
def test_workers_started_together_take_turns_leaving_the_command_a_cpu(
    cpus: int, workers: int, waits: dict[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most one worker per CPU but one starts at a time (``mcpi_worker.start_turn``):
    each further worker waits on a pipe only the worker before it holds the other end of
    (not the command, whose ends are closed: the end of file comes when that worker has
    started, or died).

    Each worker is held in a ``sitecustomize`` before it runs any of ours: a worker that
    started would close the end it passes on, and one whose turn came the end it waited
    on, before this test could read them in ``/proc`` (on a loaded machine, the test can
    be off its CPU for a worker's whole start)."""
    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(3600)  # until early.discard kills us\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    started = early.start(["estimate", "-n", "1e9", "-w", str(workers)], {}, cpus=cpus)
    try:
        assert started == workers
        pids = [worker.process.pid for worker in early._started]
        turns = [environment_of(pid).get("MCPI_START_TURN", ",").split(",") for pid in pids]
        waited = {}
        for index, (waiting, _) in enumerate(turns):
            if waiting:
                (passer,) = [j for j, (_, passing) in enumerate(turns)
                             if passing and _pipe_of(pids[j], passing) == _pipe_of(pids[index], waiting)]  # fmt: skip
                waited[index] = passer
        assert waited == waits
        passed_on = {_pipe_of(pid, passing) for pid, (_, passing) in zip(pids, turns, strict=True) if passing}
        assert len(passed_on) == len(waits)
        assert not passed_on & _our_pipes()
    finally:
        early.discard()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads the workers' environment in /proc")
@pytest.mark.parametrize("workers", [1, 2])
def test_a_turn_in_the_command_s_own_environment_reaches_no_worker(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``MCPI_START_TURN`` names descriptors a worker inherits from the command that set it:
    one in the command's own environment (a stray export) is never passed on."""
    monkeypatch.setenv("MCPI_START_TURN", "0,1")
    started = early.start(["estimate", "-n", "1e9", "-w", str(workers)], {}, cpus=2)
    try:
        assert started == workers
        turns = [environment_of(worker.process.pid).get("MCPI_START_TURN") for worker in early._started]
        assert "0,1" not in turns
        assert len([turn for turn in turns if turn is not None]) == (2 if workers == 2 else 0)
    finally:
        early.discard()
    process = early.spawn(early.worker_argv())
    try:
        assert "MCPI_START_TURN" not in environment_of(process.process.pid)
    finally:
        for fd in (process.stdin, process.stdout, process.stderr):
            os.close(fd)
        process.process.kill()
        process.process.wait()


def test_a_plain_estimate_takes_the_worker_started_as_it_began() -> None:
    env = {**os.environ, "MCPI_LOG_LEVEL": "debug", "MCPI_LOG_FORMAT": "json"}
    env.pop("MCPI_WORKER_CMD", None)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    run = subprocess.run(
        [sys.executable, "-m", "mcpi_coordinator", "estimate", "-n", "1000", "-s", "4", "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    early_pids = [e["pid"] for e in events if e["event"] == "worker_started_early"]
    assert early_pids == [report["per_worker"][0]["pid"]]  # the one worker is the early one
    assert sum(1 for e in events if e["event"] == "worker_launching") == 1
    assert report["inside"] == count_numpy(4, 0, 1000)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


SPAWNS_SEEN = """\
import sys
def seen(event, args):
    if event == "subprocess.Popen" and any("mcpi_worker" in str(word) for word in args[1]):
        sys.stderr.write("spawned: mcpi_worker\\n")
sys.addaudithook(seen)
sys.argv = ["mcpi", *sys.argv[1:]]
from mcpi_coordinator.cli.boot import main
sys.exit(main())
"""
"""The ``mcpi`` command, with a line on stderr for each worker it spawns (an audit hook
sees every ``subprocess.Popen``: counted, however briefly the process lived)."""


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["-n", "1e13", "-w", "1000"], {}),  # more than the machine holds (capacity)
        (["-n", "1000"], {"MCPI_LOG_FORMAT": "xml"}),
        (["-n", "1000"], {"MCPI_LOG_LEVEL": "loud"}),
        (["-n", "1000", "--startup-timeout", "-1"], {}),
        (["-n", "1000", "--log-level", "loud"], {}),
        (["-n", "0"], {}),
    ],
)
def test_a_command_refused_for_its_arguments_starts_no_worker(args: list[str], env: dict[str, str]) -> None:
    """Bad arguments: one line, exit 2, and no worker ever spawned. The machine's capacity
    and the log options' environment variables used to be checked only once the workers
    started early were running (they were killed and reaped before the exit)."""
    run = subprocess.run(
        [sys.executable, "-c", SPAWNS_SEEN, "estimate", *args],
        capture_output=True, text=True, timeout=300, env={**CLEAN_ENV, **env},
    )  # fmt: skip
    said = run.stderr.splitlines()
    assert run.returncode == 2, run.stderr
    assert len(said) == 1 and said[0].startswith("mcpi estimate: error: "), said


def test_workers_not_ready_when_the_run_ended_are_not_counted_as_working() -> None:
    from array import array

    from mcpi_coordinator.cli.estimate_text import workers_summary
    from mcpi_coordinator.pool.worker_pool import PoolStats, WorkerStats
    from mcpi_coordinator.run.estimate import EstimateResult

    def worker(slot: int, host: str | None, chunks: int, restarts: int = 0, state: str = "stopped") -> WorkerStats:
        return WorkerStats(slot, state, None, host, chunks, chunks * 10, 0.0, restarts)

    def summary(*workers: WorkerStats) -> str:
        pool = PoolStats(len(workers), 0, 0, 4, 0, 0, workers)
        result = EstimateResult(
            inside=31, points=40, requested_points=40, seed=1, chunk_size=10, kernel="numpy", workers=len(workers),
            elapsed_s=0.1, stopped_early=None, pool=pool, chunk_points=array("q", [10] * 4),
            chunk_inside=array("q", [8] * 4),
        )  # fmt: skip
        return workers_summary(result)

    assert summary(worker(0, "vm", 4), worker(1, None, 0, restarts=2)) == (
        "1 of 2  (0 restarts; 1 not ready before the run ended)"
    )
    assert summary(worker(0, "vm", 3), worker(1, "vm", 1)) == "2  (0 restarts)"
    assert summary(worker(0, "vm", 4), worker(1, None, 0, restarts=2, state="retired")) == (
        "1 of 2  (0 restarts; 1 dropped after 3 failed starts)"
    )


def test_a_worker_does_not_load_what_it_does_not_use() -> None:
    """structlog loads rich (console colours, pretty tracebacks) when it is installed: a
    worker, which writes JSON lines, starts without it. Checked in the worker's own exit
    handlers, which mcpi_worker.boot runs before it leaves."""
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted(m for m in sys.modules if m.split('.')[0] == 'rich'"
        " and sys.modules[m] is not None), file=sys.stderr))\n"
        "from mcpi_worker.boot import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "[]", done.stderr
