"""``benchmarks/busy_loops.py``, the busy machine that ``overhead.py --busy N`` runs beside:
its loops run in the sessions it says while the block runs, are gone when it is left,
and end themselves when the benchmark is killed outright (the process table is the judge)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from mcpi_coordinator.testing.processes import still_running, wait_until_gone

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TIMEOUT = 60.0  # seconds; a bound against a hang, far above what any step takes


def _holder(same_session: bool, then: str) -> subprocess.Popen[str]:
    """A process that enters ``busy_loops(2)``, prints its own session and the loops' pids
    and sessions as one JSON line, then does ``then`` inside the block."""
    script = textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(BENCHMARKS)!r})
        from busy_loops import busy_loops
        with busy_loops(2, same_session={same_session!r}) as pids:
            print(json.dumps({{"sid": os.getsid(0), "loops": {{p: os.getsid(p) for p in pids}}}}), flush=True)
            {then}
    """)
    return subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _running(holder: subprocess.Popen[str]) -> tuple[int, dict[int, int]]:
    assert holder.stdout is not None
    seen = json.loads(holder.stdout.readline())
    return seen["sid"], {int(pid): sid for pid, sid in seen["loops"].items()}


@pytest.mark.parametrize("same_session", [False, True])
def test_the_loops_run_in_the_sessions_asked_for_and_are_gone_when_the_block_is_left(same_session: bool) -> None:
    holder = _holder(same_session, then="sys.stdin.read()")
    try:
        sid, loops = _running(holder)
        assert len(loops) == 2 and not set(loops) & {holder.pid}
        if same_session:
            assert set(loops.values()) == {sid}
        else:
            assert list(loops.values()) == list(loops)  # each leads a session of its own
        assert still_running(loops) == list(loops)
        assert all(psutil.Process(pid).ppid() == holder.pid for pid in loops)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the block ends
        assert holder.wait(TIMEOUT) == 0
    assert still_running(loops) == []  # killed and reaped by the holder before it returned


def test_the_loops_end_themselves_when_the_benchmark_is_killed_outright() -> None:
    holder = _holder(False, then="sys.stdin.read()")
    try:
        _, loops = _running(holder)
        os.kill(holder.pid, signal.SIGKILL)  # no finally of its own runs
        holder.wait(TIMEOUT)
        left, _ = wait_until_gone(loops, TIMEOUT)
        assert left == []
    finally:
        for pid in still_running(locals().get("loops", {})):
            os.kill(pid, signal.SIGKILL)


def _ignores_sigint(pid: int) -> bool:
    """Whether process ``pid`` ignores SIGINT (its ``SigIgn`` mask in ``/proc``)."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the loops' signal masks in /proc")
def test_a_ctrl_c_leaves_the_same_session_loops_to_the_benchmark_and_prints_nothing() -> None:
    """With ``same_session`` the loops are in the terminal's foreground process group, so
    Ctrl-C reaches them too: each ended with a ``KeyboardInterrupt`` traceback on the
    terminal beside the benchmark's own one line. They ignore it now, and the benchmark
    ends them as it leaves the block. The holder leads a session of its own (Ctrl-C is
    sent to its group, not to pytest's)."""
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(BENCHMARKS)!r})
        from busy_loops import busy_loops
        with busy_loops(2, same_session=True) as pids:
            print(json.dumps(pids), flush=True)
            try:
                sys.stdin.read()
            except KeyboardInterrupt:
                print("interrupted", flush=True)
    """)
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        loops = [psutil.Process(pid) for pid in json.loads(holder.stdout.readline())]
        for loop in loops:  # into its loop: far more CPU than an interpreter's start
            started = time.monotonic()
            while loop.cpu_times().user < 0.2:
                assert time.monotonic() - started < TIMEOUT, f"loop {loop.pid} never got busy"
                time.sleep(0.05)
        assert [_ignores_sigint(loop.pid) for loop in loops] == [True, True]
        os.killpg(holder.pid, signal.SIGINT)  # Ctrl-C in the holder's terminal
        out, err = holder.communicate(timeout=TIMEOUT)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert (holder.returncode, out, err) == (0, "interrupted\n", "")
    assert still_running(loop.pid for loop in loops) == []


def test_loops_that_cannot_start_raise_their_own_error() -> None:
    """Out of descriptors (the open-file limit lowered to what the process holds), the
    first loop's start fails: ``LoopsNotStarted``, not a bare ``OSError`` that a command
    could not tell from one raised by what it runs beside the loops."""
    script = textwrap.dedent("""
        import os, resource
        from mcpi_coordinator.bench.busy import LoopsNotStarted, busy_loops
        held = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own descriptor
        resource.setrlimit(resource.RLIMIT_NOFILE, (held, held))
        try:
            with busy_loops(2):
                print("started")
        except LoopsNotStarted as exc:
            print("refused:", exc)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("refused: cannot start the --busy loops:"), run.stdout
