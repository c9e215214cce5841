"""A user's value that is very long, quoted in a one-line error: shortened, with its length.

Before, ``mcpi estimate --points <100,000 digits>``, ``--host`` or ``--worker-cmd`` of that
size, an invalid ``--log-level`` choice and the rest quoted the value whole: a "one line"
of 100 kB. Each command line here runs the real command; its error is still one line and
exit 2, and now short, saying how long the value was (``mcpi_worker.quoting``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from command_line import CLEAN_ENV, MCPI
from worker_process import worker_command

from mcpi_worker.quoting import KEPT_HEAD, KEPT_TAIL, QUOTED_WHOLE, quoted, shortened_in

LONG = 100_000
"""Characters of the long value: below Linux's limit on one argument (128 KiB)."""
NINES = "9" * LONG
NAME = "a" * LONG
LONG_NAME = "b" * 300
"""A file name longer than Linux allows one (255 bytes), but an argument like any other."""
SHORT_LINE = 400
"""Longer than any of these errors with the value shortened; far below the value."""

COMMAND_LINES = {
    "--points": [*MCPI, "estimate", "--points", NINES],
    "--max-time": [*MCPI, "estimate", "--max-time", NINES],
    "--host": [*MCPI, "estimate", "--host", NAME],
    "--host's worker count": [*MCPI, "estimate", "--host", f"a*{NINES}"],
    "--host's port": [*MCPI, "estimate", "--host", f"a:{NINES}"],
    "--worker-cmd, no such program": [*MCPI, "estimate", "--worker-cmd", f"/{NAME}"],
    "--worker-cmd, unbalanced quote": [*MCPI, "estimate", "--worker-cmd", f'"{NAME}'],
    "--ssh-option": [*MCPI, "estimate", "--ssh-option", NAME],
    "--hosts-file": [*MCPI, "estimate", "--hosts-file", f"/{NAME}"],
    "--plot": [*MCPI, "estimate", "--plot", f"/nonexistent/{NAME}.png"],
    "--log-level (argparse's invalid choice)": [*MCPI, "estimate", "--log-level", NAME],
    "--json=VALUE (argparse's ignored explicit argument)": [*MCPI, "estimate", f"--json={NAME}"],
    "an unrecognized argument": [*MCPI, "estimate", NAME],
    "an unknown command": [*MCPI, NAME],
    "an option before the command": [*MCPI, "--points", NINES, "estimate"],
    "mcpi combine": [*MCPI, "combine", f"/{NAME}"],
    "mcpi scatter --out": [*MCPI, "scatter", "-o", f"/{NAME}.png"],
    # A file name past the system's 255 bytes (ENAMETOOLONG): a traceback before, where
    # Path.is_dir() and Path.exists() raise it rather than answer.
    "--checkpoint, a name too long for the system": [*MCPI, "estimate", "--checkpoint", f"{LONG_NAME}.db"],
    "--resume, a name too long for the system": [*MCPI, "estimate", "--resume", f"{LONG_NAME}.db"],
    "--plot, a name too long for the system": [*MCPI, "estimate", "--plot", f"{LONG_NAME}.png"],
    "mcpi scatter --out, a name too long for the system": [*MCPI, "scatter", "-o", f"{LONG_NAME}.gif"],
    "mcpi combine, a name too long for the system": [*MCPI, "combine", f"{LONG_NAME}.json"],
    "mcpi-worker --jobs": [*worker_command(), "--jobs", NINES],
    "mcpi-worker --max-inflight": [*worker_command(), "--max-inflight", NAME],
    "mcpi-worker --log-level (argparse's invalid choice)": [*worker_command(), "--log-level", NAME],
    "mcpi-worker, an unrecognized argument": [*worker_command(), NAME],
}


@pytest.mark.parametrize("name", list(COMMAND_LINES))
def test_a_long_value_in_an_error_is_shortened_on_its_one_line(name: str, tmp_path: Path) -> None:
    done = subprocess.run(
        COMMAND_LINES[name], capture_output=True, text=True, env=CLEAN_ENV, cwd=tmp_path,
        stdin=subprocess.DEVNULL, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[:SHORT_LINE]
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr[:SHORT_LINE]
    assert len(lines[0]) < SHORT_LINE, lines[0][:SHORT_LINE]
    assert "characters)" in lines[0], lines[0]
    assert "Traceback" not in done.stderr


def test_a_long_environment_value_is_shortened_too() -> None:
    done = subprocess.run(
        [*MCPI, "estimate", "-n", "1e6"], capture_output=True, text=True, env={**CLEAN_ENV, "MCPI_LOG_LEVEL": NAME},
        stdin=subprocess.DEVNULL, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"MCPI_LOG_LEVEL={quoted(NAME)} is not one of" in done.stderr
    assert len(done.stderr) < SHORT_LINE


def test_quoted_keeps_a_short_value_whole_and_a_long_one_start_and_end() -> None:
    whole = "x" * QUOTED_WHOLE
    assert quoted(whole) == repr(whole)
    assert quoted(Path("/tmp/a b")) == "'/tmp/a b'"
    value = "s" * KEPT_HEAD + "m" * 1000 + "e" * KEPT_TAIL
    assert quoted(value) == f"'{'s' * KEPT_HEAD}...{'e' * KEPT_TAIL}' ({len(value):,} characters)"
    assert quoted(value, quote=False) == f"{'s' * KEPT_HEAD}...{'e' * KEPT_TAIL} ({len(value):,} characters)"
    assert quoted("it's" + "x" * 200).startswith('"it\'s')  # repr's own choice of quote


def test_shortened_in_finds_a_long_word_quoted_bare_or_after_an_option() -> None:
    words = ["estimate", f"--json={NAME}", NINES, "-n", "5"]
    message = f"ignored explicit argument {NAME!r}; unrecognized arguments: {NINES} -n 5"
    shortened = shortened_in(message, words)
    assert shortened == (
        f"ignored explicit argument {quoted(NAME)}; unrecognized arguments: {quoted(NINES, quote=False)} -n 5"
    )
    assert shortened_in("argument -n: invalid choice: '5'", words) == "argument -n: invalid choice: '5'"
