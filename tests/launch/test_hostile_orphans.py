"""Nothing a worker leaves behind outlives ``mcpi estimate``, even in a session of its own,
nor the pool, in a process group of its own.

The hostile peer is ``raw_worker.py setsid_child``: it answers its first sample, forks a
child that calls ``setsid()`` (so no process-group kill of ours reaches it) and keeps the
worker's stdout and stderr, and exits. On Linux the coordinator is a child subreaper:
the child is re-parented to it, and killed and reaped before the command returns. The
process table is the judge.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import trio
from command_line import raw_worker_in_slot_0
from worker_process import PATIENT_START_S, RAW_WORKER

from mcpi_coordinator.launch.local import _kill_in_session, command_launcher
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_worker.kernels import KERNELS

TIMEOUT = 300  # seconds; reached only by a hang

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux's")


def alive(pid: int) -> bool:
    """Running (a zombie is dead: it only waits for its parent to reap it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def pidfile(tmp_path: Path) -> Iterator[Path]:
    """Where the hostile workers write their children's pids; any still running at the
    end is killed, so a failing test leaves nothing either."""
    path = tmp_path / "children"
    yield path
    for pid in left_children(path):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def left_children(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
def test_a_setsid_grandchild_is_gone_when_mcpi_estimate_returns(pidfile: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mcpi_coordinator", "estimate", "-n", "40000", "--chunk-size", "1000", "-s", "4",
         "--workers", "2", "--json", "--worker-cmd", raw_worker_in_slot_0("setsid_child")],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False,
        env={**os.environ, "RAW_WORKER_PIDFILE": str(pidfile)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    children = left_children(pidfile)
    assert children, "the hostile worker never got a sample: nothing was tested"
    assert [pid for pid in children if alive(pid)] == []
    assert "orphans_ended" in run.stderr  # one warning line says so
    report = json.loads(run.stdout)
    assert report["inside"] == sum(KERNELS["numpy"](4, s, 1000) for s in range(40))


ADOPT = """
import json, os, subprocess, sys, time
import psutil
from mcpi_coordinator.launch.local import become_subreaper, end_orphans, own_children


def _sid(pid):
    try:
        return os.getsid(pid)
    except OSError:
        return None


marker = sys.argv[1]
assert become_subreaper()
subprocess.run(["sh", "-c", f"setsid sleep 60 & setsid sh -c 'sleep 60 & echo > {marker}; sleep 60' &"],
               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
deadline = time.monotonic() + 120  # a bound against a hang, not a claim of speed
while not os.path.exists(marker):  # the inner shell has started its own child
    assert time.monotonic() < deadline, "the inner shell never started"
    time.sleep(0.01)
# Both adopted and both in sessions of their own: the outer setsid may not have called
# setsid() yet, and its session was then this process's (its caller's), whose every
# process the look below took for one left behind.
while len(adopted := sorted(own_children())) != 2 or any(_sid(pid) != pid for pid in adopted):
    assert time.monotonic() < deadline, f"not two session leaders adopted: {adopted}"
    time.sleep(0.01)
sessions = set(adopted)
ended = sorted(end_orphans())
left = [p.pid for p in psutil.process_iter() if p.pid != os.getpid() and _sid(p.pid) in sessions]
print(json.dumps({"adopted": adopted, "ended": ended, "children": sorted(own_children()), "left": left}))
"""


def test_a_subreaper_adopts_and_ends_a_whole_orphaned_tree(tmp_path: Path) -> None:
    """In a process of its own (a subreaper adopts every orphan below it): a shell starts
    two sessions, one holding a child of its own, and exits. Both session leaders are
    adopted and ended, and nothing is left in their sessions (the inner child, in its
    parent's group, goes with it, or is adopted once its parent dies and ended then)."""
    run = subprocess.run(
        [sys.executable, "-c", ADOPT, str(tmp_path / "started")],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    # The inner child may be seen alive once more, adopted as its parent dies first.
    assert len(report["adopted"]) == 2 and set(report["adopted"]) <= set(report["ended"]), report
    assert report["children"] == [] and report["left"] == [], report


GIVEN_BACK = """
import ctypes, json, os, subprocess, sys
import psutil
from mcpi_coordinator.launch.local import adopting_orphans

prctl = ctypes.CDLL(None, use_errno=True).prctl


def is_subreaper():  # the kernel's word, not the code's: PR_GET_CHILD_SUBREAPER
    setting = ctypes.c_int(-1)
    assert prctl(37, ctypes.byref(setting), 0, 0, 0) == 0
    return bool(setting.value)


def orphan(pidfile):
    # A shell that starts a sleep and exits at once: the sleep is orphaned, and
    # re-parented (before the shell's exit is reported) to the nearest subreaper, or init.
    subprocess.run(["sh", "-c", f"setsid sleep 60 >/dev/null 2>&1 & echo $! > {pidfile}"], check=True)
    with open(pidfile) as file:
        return int(file.read())


report = {"before": is_subreaper()}
with adopting_orphans() as adopting:
    report["adopting"] = adopting
    inside = orphan(sys.argv[1])
    report["inside_parent"] = psutil.Process(inside).ppid() == os.getpid()
report["after"] = is_subreaper()
report["inside_running"] = psutil.pid_exists(inside)  # ended and reaped: not even a zombie
later = orphan(sys.argv[2])
report["later_parent"] = psutil.Process(later).ppid() == os.getpid()
os.kill(later, 9)
report["children"] = [(c.pid, c.status()) for c in psutil.Process().children()]
assert prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER: a process that was a subreaper already stays one
with adopting_orphans():
    pass
report["kept"] = is_subreaper()
print(json.dumps(report))
"""


def test_the_subreaper_role_ends_with_the_block(tmp_path: Path) -> None:
    """``adopting_orphans`` used to leave its process a subreaper for good: pytest running
    ``cli.estimate.run`` in-process (or a program embedding it) then adopted every later
    orphan of its descendants and, never expecting them, never reaped them. In a process
    of its own: an orphan made inside the block is adopted, then ended and reaped; after
    the block the process is no subreaper (as before it), an orphan made then goes
    elsewhere, and no child of it is left, zombie or not. A process that was a subreaper
    before the block stays one."""
    run = subprocess.run(
        [sys.executable, "-c", GIVEN_BACK, str(tmp_path / "inside"), str(tmp_path / "later")],
        capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (line,) = run.stdout.splitlines()  # nothing configured logging: the library's warnings go to stderr
    report = json.loads(line)
    assert report["before"] is False and report["adopting"] is True and report["inside_parent"] is True, report
    assert report["inside_running"] is False and "orphans_ended" in run.stderr, report
    assert report["after"] is False and report["later_parent"] is False, report
    assert report["children"] == [] and report["kept"] is True, report


OWN_CHILDREN_READS = """
import json, subprocess, sys, threading
from mcpi_coordinator.launch.local import own_children
reads = []
sys.addaudithook(lambda event, args: reads.append(str(args[0])) if event == "open" else None)
running = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
# A child of another thread counts too: the kernel lists each thread's own children.
thread = threading.Thread(target=lambda: running.append(subprocess.Popen(["sleep", "60"])))
thread.start()
thread.join()
zombie = subprocess.Popen(["true"])  # exits, and stays a zombie: nothing here reaps it
while own_children().get(zombie.pid) != "Z":
    pass
reaped = subprocess.Popen(["true"])
reaped.wait()  # no longer a child
reads.clear()
found = own_children()
stats = [path for path in reads if path.endswith("/stat")]
for process in running:
    process.kill()
    process.wait()
zombie.wait()
print(json.dumps({"found": found, "running": [p.pid for p in running], "zombie": zombie.pid,
                  "reaped": reaped.pid, "stats": stats}))
"""


def test_own_children_reads_only_this_processs_children() -> None:
    """The kernel lists each thread's children, so ``own_children`` reads the ``stat`` of
    those alone, not of every process on the machine (an orphan check runs at the start and
    end of every run); it finds the children of every thread, zombies included."""
    done = subprocess.run([sys.executable, "-c", OWN_CHILDREN_READS], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    found = {int(pid): state for pid, state in seen["found"].items()}
    expected = dict.fromkeys(seen["running"], "S") | {seen["zombie"]: "Z"}
    assert {pid: "Z" if state == "Z" else "S" for pid, state in found.items()} == expected, seen
    assert len(seen["stats"]) == len(found), seen  # one stat read per child, no more


@pytest.mark.parametrize("fault", ["child_holds_pipes", "setpgid_child"])
async def test_a_child_left_in_the_workers_session_is_ended_by_the_pool_itself(
    fault: str, pidfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No subreaper here (a program using ``WorkerPool`` is none): the worker's child,
    holding its pipes, in the worker's process group or in a group of its own (as a
    shell's background job under job control, or GNU ``timeout``'s child, is), is still
    in the worker's session, whose id stays ours until the worker is reaped. The pool
    ends it before it reaps the worker; it used to end only the group."""
    monkeypatch.setenv("RAW_WORKER_PIDFILE", str(pidfile))
    commands = {0: [sys.executable, RAW_WORKER, fault], 1: [sys.executable, "-m", "mcpi_worker"]}
    chunks = [Chunk(seed=5, stream=s, points=2000) for s in range(6)]
    with trio.fail_after(TIMEOUT):
        async with (
            WorkerPool(
                2, launcher=command_launcher(commands.__getitem__), pipeline_depth=1, startup_timeout=PATIENT_START_S
            ) as pool,
            pool.imap_unordered(chunks) as results,
        ):
            inside = sum([result.inside async for result in results])
    assert inside == sum(KERNELS["numpy"](5, s, 2000) for s in range(6))
    children = left_children(pidfile)
    assert children, "the hostile worker never got a sample: nothing was tested"
    assert [pid for pid in children if alive(pid)] == []


def test_kill_in_session_signals_only_a_live_process_of_that_session() -> None:
    """``end_session``'s one signal: a process of the worker's session (here a shell's
    background child) is killed; one of another session (this test's) and a pid that is
    gone are left alone and said so."""
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 600 & echo $!; wait"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert leader.stdout is not None
        child = int(leader.stdout.readline())
        assert os.getsid(child) == leader.pid
        assert not _kill_in_session(os.getpid(), leader.pid)  # another session: not signalled
        assert not _kill_in_session(child, os.getpid())
        assert alive(child)
        assert _kill_in_session(child, leader.pid)
        leader.wait(TIMEOUT)  # its ``wait`` returns once the child is killed
        assert not alive(child)
        assert not _kill_in_session(child, leader.pid)  # gone (reaped by the shell)
    finally:
        if leader.poll() is None:
            os.killpg(leader.pid, signal.SIGKILL)  # its group holds the child too
        leader.wait(TIMEOUT)


KILL_IN_SESSION_WITHOUT_PIDFD_OPEN = """
import os, signal, subprocess
del os.pidfd_open  # conda's Pythons, built against older kernel headers, have none
from mcpi_coordinator.launch.local import _kill_in_session

leader = subprocess.Popen(
    ["sh", "-c", "sleep 600 & echo $!; wait"], stdout=subprocess.PIPE, text=True, start_new_session=True
)
try:
    child = int(leader.stdout.readline())
    print(_kill_in_session(child, leader.pid), flush=True)
    leader.wait(300)  # its ``wait`` returns once the child is killed
finally:
    if leader.poll() is None:
        os.killpg(leader.pid, signal.SIGKILL)
"""


def test_kill_in_session_on_a_python_without_pidfd_open_signals_by_pid() -> None:
    """``os.pidfd_open`` is missing from some Linux Pythons (conda's: trio's issue 2855):
    ``end_session`` then signals by pid, as on a kernel without pidfds. Before, it raised
    ``AttributeError`` out of ``SessionProcess.kill`` when a killed worker's session
    still held its pipes (a shell's background job, ``timeout``'s child)."""
    done = subprocess.run(
        [sys.executable, "-c", KILL_IN_SESSION_WITHOUT_PIDFD_OPEN], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr
