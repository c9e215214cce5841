"""Ctrl-C that reaches a bare ``mcpi-worker`` while it starts (benchmarks/signals.py found it).

A worker whose stdin is a pipe leaves Ctrl-C to whoever owns that pipe: its lifetime
ends with the end of its input, ``shutdown`` or SIGTERM (docs/worker.md). A SIGINT sent
to its process group while it still imported its modules (argparse, structlog, NumPy)
printed a 20-40-line ``KeyboardInterrupt`` traceback and ended it with exit 1 or by the
signal, where the same SIGINT a moment later is ignored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

MOMENTS = ["mcpi_worker.boot", "argparse", "mcpi_worker.kernels", "mcpi_worker.server", "structlog"]
"""Modules the worker imports as it starts; the SIGINT comes just after each one. (NumPy is
no longer among them: a worker imports it when it first counts with it.)"""


@pytest.mark.parametrize("module", MOMENTS)
def test_ctrl_c_while_a_piped_worker_starts_is_left_to_its_owner(module: str) -> None:
    """``-X importtime`` writes a line to stderr as each import completes: the signal is
    sent on reading the module's line (an event, not a time), so it lands while the next
    ones load. The worker must carry on and end in order when its input ends."""
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-P", "-m", "mcpi_worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None and process.stdin is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if line.rpartition("|")[2].strip() == module:
                os.killpg(process.pid, signal.SIGINT)  # to the group, as a terminal sends it
                break
        else:
            pytest.fail(f"{module} was never imported: {''.join(seen)[-2000:]}")
        process.stdin.close()  # end of input: the worker's orderly end
        err = "".join(seen) + process.stderr.read()
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    said = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, said[-40:]
    assert process.returncode == 0, said
