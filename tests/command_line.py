"""``mcpi`` run as a user runs it, for the tests that check the command line.

One home for what the CLI tests each used to keep a copy of: how ``mcpi`` is started,
the environment a test wants it to see, its ``--json`` read back, the one-line refusal
every bad input gets, the ``--worker-cmd`` that puts another program in slot 0, and a
run on a pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shlex
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Mapping
from typing import Any

from worker_process import RAW_WORKER

MCPI = [sys.executable, "-m", "mcpi_coordinator"]
PYTHON = shlex.quote(sys.executable)
"""This interpreter, quoted for a ``--worker-cmd`` (which mcpi splits as a shell would)."""
FAKE_WORKER = f"{PYTHON} -m mcpi_coordinator.testing.fake_worker"
"""The subprocess fake as a ``--worker-cmd``; its options (``--slow``, ``--wrong-count``) follow."""
CLEAN_ENV = {
    k: v for k, v in os.environ.items() if not k.startswith("MCPI_") and k not in ("NO_COLOR", "COLUMNS")
}
"""This environment without what changes mcpi's output: its own variables, NO_COLOR, COLUMNS."""


def mcpi(
    *args: str, timeout: float = 120, env: Mapping[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``mcpi ARGS`` to its end, output as text. Its stdin is ``stdin``, or ``/dev/null``
    so that no run waits on the terminal; ``env``, when given, is its whole environment.
    Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds (reached only by a hang)."""
    return subprocess.run(
        [*MCPI, *args], capture_output=True, text=True, timeout=timeout, check=False,
        env=env, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
    )  # fmt: skip


def mcpi_clean(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``mcpi ARGS`` in ``CLEAN_ENV`` with ``env`` added."""
    return mcpi(*args, timeout=timeout, env={**CLEAN_ENV, **(env or {})})


PATIENT = ("--startup-timeout", "300")
"""For a run that must succeed and is not about the start-up timeout: its real-clock
default (10 s) can pass on a machine at extreme load. A later ``--startup-timeout`` in a
test's own arguments wins."""


def estimate_json_and_stderr(*args: str, timeout: float = 600) -> tuple[dict[str, Any], str]:
    """``mcpi estimate --json ARGS``, which must succeed (its workers are given ``PATIENT``
    start-up): its document and its stderr."""
    run = mcpi("estimate", "--json", *PATIENT, *args, timeout=timeout)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    document: dict[str, Any] = json.loads(run.stdout)
    return document, run.stderr


def estimate_json(*args: str, timeout: float = 600) -> dict[str, Any]:
    """``mcpi estimate --json ARGS``, which must succeed: its document."""
    return estimate_json_and_stderr(*args, timeout=timeout)[0]


def one_line_refusal(run: subprocess.CompletedProcess[str], message: str) -> None:
    """Bad input: exit 2, nothing on stdout, one line on stderr that says ``message``."""
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert run.stdout == "" and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and message in run.stderr, run.stderr


def slot_0_runs(command: str) -> str:
    """A ``--worker-cmd``: worker 0 runs the shell command ``command``, every other worker
    the real ``mcpi-worker`` (``{i}`` is the worker's index, filled in by mcpi)."""
    script = f"if [ {{i}} = 0 ]; then exec {command}; else exec {PYTHON} -m mcpi_worker; fi"
    return f"sh -c {shlex.quote(script)}"


def read_until_closed(leader: int, timeout: float = 600) -> bytes:
    """All the program side of a pseudo-terminal wrote, read from its ``leader`` until every
    writer has closed it (EIO or end of file) or ``timeout`` seconds have passed (a hang)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        seen += data
    return seen


def run_in_terminal(
    args: list[str], columns: int, env: Mapping[str, str] | None = None, timeout: float = 120
) -> tuple[int, str]:
    """Run ``mcpi ARGS`` in ``CLEAN_ENV`` (and ``env``) with stdout and stderr on a
    pseudo-terminal of ``columns`` columns and 40 rows: its exit code and all it drew."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(
        [*MCPI, *args], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
        env={**CLEAN_ENV, "TERM": "xterm-256color", **(env or {})},
    )  # fmt: skip
    os.close(follower)
    seen = read_until_closed(leader, timeout)
    code = process.wait(timeout=60)
    os.close(leader)
    return code, seen.decode()


def raw_worker_in_slot_0(fault: str) -> str:
    """A ``--worker-cmd``: worker 0 is ``raw_worker.py FAULT`` (a worker breaking one rule),
    every other worker the real ``mcpi-worker``."""
    return slot_0_runs(f"{PYTHON} {shlex.quote(RAW_WORKER)} {fault}")


def until_stopped(pid: int, bound_s: float = 300.0) -> bool:
    """Wait until our child ``pid`` stops (SIGSTOP): True then; False if it exited first,
    or after ``bound_s`` (a bound against a hang only: a start is slow on a busy machine).
    The stop itself is waited for (``waitid``), not polled for in the process table.
    ``WNOWAIT`` leaves the child's states to be collected as before: a continued child's
    exit is ``Popen``'s to reap."""
    seen: list[os.waitid_result | None] = []

    def wait() -> None:
        try:
            seen.append(os.waitid(os.P_PID, pid, os.WSTOPPED | os.WEXITED | os.WNOWAIT))
        except ChildProcessError:  # reaped meanwhile: it exited
            seen.append(None)

    waiter = threading.Thread(target=wait, name=f"until-stopped-{pid}", daemon=True)
    waiter.start()
    waiter.join(bound_s)  # past the bound the thread is left waiting: a daemon, harmless
    return bool(seen) and seen[0] is not None and seen[0].si_code == os.CLD_STOPPED
