"""The signals sweep (benchmarks/signals.py) runs and judges: a few of its runs, as CI can
afford them. The sweep itself, a few hundred runs, is run by hand (docs/faults.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SWEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "signals.py"


@pytest.mark.slow
def test_a_small_sweep_finds_nothing_wrong() -> None:
    """Ctrl-C, SIGTERM and SIGHUP at the start of a bare worker and of ``mcpi combine``:
    whatever moment each lands on, the sweep's checks (exit code, one line, no traceback,
    nothing of the run left in the process table) must hold, and it says so with exit 0."""
    done = subprocess.run(
        [sys.executable, str(SWEEP), "--only", "worker,combine", "--step", "0.3", "--until", "0.3", "-v"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "6 runs, 0 with problems" in done.stdout, done.stdout
