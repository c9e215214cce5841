"""mcpi_coordinator used as a library (issue 20, finding 6): a program that configured
no logging gets nothing on its stdout from the pool, only warnings and errors on
stderr; a program that configured structlog gets the pool's logs where it said.

The unconfigured cases run in a fresh interpreter: structlog's configuration is
process-wide, and the test process has long been configured by other tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import structlog
import trio
from structlog.testing import capture_logs

from mcpi_coordinator import Chunk, WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import by_launch, fake_launcher


def _run_script(source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source), encoding="utf-8")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip


def test_an_unconfigured_program_gets_only_its_own_lines_on_stdout(tmp_path: Path) -> None:
    """Real workers, started, handshaken, sampled and stopped: every step logs at info."""
    run = _run_script(
        """
        import trio
        from mcpi_coordinator import Chunk, WorkerPool

        async def main() -> None:
            async with WorkerPool(size=2) as pool:
                result = await pool.sample(Chunk(seed=1, stream=0, points=1000))
                print("inside", result.inside)

        trio.run(main)
        """,
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [line for line in run.stdout.splitlines() if line.startswith("inside ")]
    assert len(run.stdout.splitlines()) == 1, run.stdout
    assert "[info" not in run.stderr and '"level": "info"' not in run.stderr, run.stderr


def test_an_unconfigured_library_logger_says_warnings_on_stderr_and_drops_info(tmp_path: Path) -> None:
    run = _run_script(
        """
        from mcpi_coordinator.logs import get_logger

        log = get_logger("mcpi.pool")
        log.info("routine_event", worker=1)
        log.bind(worker=2).warning("worker_retired", reason="exit code 7")
        print("own line")
        """,
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "own line\n"
    assert "routine_event" not in run.stderr
    (line,) = [line for line in run.stderr.splitlines() if "worker_retired" in line]
    assert "warning" in line and "reason='exit code 7'" in line and "worker=2" in line


async def test_a_program_that_configured_structlog_gets_the_pools_logs(autojump_clock: object) -> None:
    saved = structlog.get_config()
    try:
        with capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                launcher = fake_launcher(nursery, by_launch(FakeBehaviour(crash_after=0)))
                async with WorkerPool(1, launcher=launcher) as pool:
                    await pool.sample(Chunk(seed=1, stream=0, points=1000))
    finally:
        structlog.configure(**saved)
    events = {entry["event"] for entry in logs}
    assert {"worker_ready", "worker_failed"} <= events, events
