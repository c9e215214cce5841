"""The kit's process-table helper: a live process runs; a zombie or a reaped one does not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from mcpi_coordinator.testing.processes import still_running, wait_until_gone

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_live_process_is_running_and_a_killed_unreaped_one_is_not() -> None:
    child = subprocess.Popen(SLEEPER)
    try:
        assert still_running([child.pid]) == [child.pid]
        os.kill(child.pid, signal.SIGKILL)
        # Not reaped yet: a zombie has stopped running, which is what orphan tests ask.
        left, _ = wait_until_gone([child.pid], timeout_s=10)
        assert left == []
        assert os.waitpid(child.pid, os.WNOHANG)[0] == child.pid  # it was a zombie until now
        child.returncode = -signal.SIGKILL  # reaped above: Popen must not wait again
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()
    assert still_running([child.pid]) == []


def test_wait_until_gone_reports_what_is_left_after_the_timeout() -> None:
    child = subprocess.Popen(SLEEPER)
    try:
        left, took = wait_until_gone([child.pid], timeout_s=0.05)
        assert left == [child.pid]
        assert took >= 0.05
    finally:
        child.kill()
        child.wait()
