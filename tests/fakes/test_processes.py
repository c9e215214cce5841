"""The kit's process-table helper: a live process runs; a zombie or a reaped one does not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from mcpi_coordinator.testing.processes import peak_rss_until_exit, still_running, wait_until_gone

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


def test_peak_rss_until_exit_sees_memory_the_child_really_held() -> None:
    # 200 MB, touched page by page so it is resident, held long enough to be polled.
    holder = [sys.executable, "-c",
              "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5)"]
    child = psutil.Popen(holder)
    try:
        peak = peak_rss_until_exit(child, poll_s=0.01)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert peak > 150 * 2**20
