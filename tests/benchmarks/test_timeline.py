"""``benchmarks/timeline.py``: the moments of a tiny run read from ``strace -f -ttt``'s lines
(the lines below are a real run's, cut short), and a real run under strace where it is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from slurm import in_ci

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TIMEOUT = 300.0  # seconds; a bound against a hang, far above what one traced round takes

TRACE = r"""29676 1000.000000 execve("/v/bin/python", ["/v/bin/python", "-m", "mcpi_coordinator"], 0x7ffc) = 0
29676 1000.020000 vfork( <unfinished ...>
29681 1000.021000 execve("/v/bin/python", ["/v/bin/python", "-P", "-m", "mcpi_worker"], 0x7f1e <unfinished ...>
29676 1000.021100 <... vfork resumed>) = 29681
29681 1000.022000 <... execve resumed>) = 0
29676 1000.030000 openat(AT_FDCWD, "/v/lib/trio/__pycache__/__init__.cpython-311.pyc", O_RDONLY|O_CLOEXEC) = 3
29676 1000.040000 vfork( <unfinished ...>
29686 1000.041000 execve("/sbin/ldconfig", ["/sbin/ldconfig", "-p"], 0x7f1e /* 2 vars */ <unfinished ...>
29676 1000.041100 <... vfork resumed>) = 29686
29686 1000.042000 write(1, "565 libs found in cache `/etc/ld.so.cache'\n\tlibz3.so.4 (libc6,x86-64)", 4096) = 4096
29686 1000.043000 +++ exited with 0 +++
29681 1000.060000 clone3({flags=CLONE_VM|CLONE_THREAD, stack_size=0x7fff00} => {parent_tid=[29699]}, 88) = 29699
29676 1000.090000 write(4, "\0\0\0I\204\244type\245hello\250versions\222\1\2\246client", 77) = 77
29699 1000.090500 write(3, "\0\0\0\244\212\244type\247welcome\247version\2\246worker", 168) = 168
29676 1000.091000 write(4, "\0\0\0006\206\244type\246sample\242id\1\244seed\7", 58 <unfinished ...>
29699 1000.091500 openat(AT_FDCWD, "/v/lib/numpy/__pycache__/__init__.cpython-311.pyc", O_RDONLY|O_CLOEXEC) = 4
29699 1000.130000 write(3, "\0\0\0M\206\244type\246result\242id\1\246inside\315\3\24", 81 <unfinished ...>
29676 1000.130500 write(4, "\0\0\0\17\201\244type\250shutdown", 19 <unfinished ...>
29699 1000.131000 +++ exited with 0 +++
29681 1000.134000 +++ exited with 0 +++
29676 1000.135000 write(1, "{\"pi\": 3.152, \"inside\": 788, \"points\": 1000}", 1208) = 1208
29676 1000.138000 +++ exited with 0 +++
"""


@pytest.fixture
def timeline() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import timeline as module

        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_the_moments_of_a_run_are_read_from_its_trace(timeline: ModuleType) -> None:
    seen = timeline.moments(TRACE)
    expected = {
        "command started": 0.0,
        "command: worker spawned": 20.0,  # the vfork whose child became the worker
        "worker: running (exec)": 21.0,
        "command: Trio import starts": 30.0,
        "command: Trio's ldconfig started": 41.0,
        "command: Trio's ldconfig ended": 43.0,
        "worker: reader thread up": 60.0,
        "command: hello sent": 90.0,
        "worker: welcome sent": 90.5,  # written by the reader thread: the worker's
        "command: sample sent": 91.0,
        "worker: NumPy import starts": 91.5,
        "worker: result sent": 130.0,
        "command: shutdown sent": 130.5,
        "worker: gone": 134.0,  # the process, not its reader thread (at 131 ms)
        "command: result printed": 135.0,
        "command: gone": 138.0,
    }
    assert seen.keys() == expected.keys()
    for name, ms in expected.items():
        assert seen[name] == pytest.approx(ms, abs=1e-6), name


@pytest.mark.slow
def test_a_real_run_under_strace_shows_every_moment() -> None:
    if shutil.which("strace") is None:  # .ci/run installs it as root: CI never passes without this test
        reason = "needs strace; .ci/run installs it as root"
        if in_ci():
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "timeline.py"), "--rounds", "1"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    if done.returncode != 0 and "Operation not permitted" in done.stderr + done.stdout:
        pytest.skip(f"strace may not trace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    for moment in ("command: worker spawned", "worker: reader thread up", "command: hello sent",
                   "worker: result sent", "worker: gone", "command: gone"):  # fmt: skip
        assert moment in done.stdout
    assert "the sample, to its result" in done.stdout
