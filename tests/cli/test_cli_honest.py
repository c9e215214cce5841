"""Output that keeps its word (issue 20, items 1, 4 and 8): an example's target is
reached, the closing line agrees with the table, the bar of a resumed run starts where
the run is, the kernel row names what counted, and the small refusals say what is
wrong. Real ``mcpi`` processes; the waits are on events (the run's own end), never on
the clock.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from command_line import CLEAN_ENV, FAKE_WORKER, mcpi_clean, run_in_terminal

from mcpi_coordinator.run.checkpoint import Checkpoint, RunParameters
from mcpi_coordinator.run.statistics import Z_95, pi_statistics, points_to_reach
from mcpi_worker.kernels import count_numpy

ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def mcpi(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return mcpi_clean(*args, env=env, timeout=600)


def in_terminal(args: list[str], columns: int = 160) -> tuple[int, str]:
    """Run ``mcpi`` with stdout and stderr on a pseudo-terminal; all it drew, as text."""
    code, seen = run_in_terminal(args, columns, env={"NO_COLOR": "1"}, timeout=600)
    return code, ANSI.sub("", seen)


def rows_of(text: str) -> dict[str, str]:
    rows = {}
    for line in text.replace("\r", "\n").splitlines():
        label, _, value = line.partition("  ")
        if value.strip() and not label.startswith(" "):
            rows.setdefault(label.strip(), value.strip())
    return rows


# ------------------------------------------------------------------ 1. a target is reachable


def test_the_budget_of_a_target_always_holds_it() -> None:
    """(2z/ε)² points make the half-width at most ε whatever p̂ is (p̂(1 − p̂) ≤ 1/4)."""
    for target in (1e-1, 3e-3, 1e-4, 2.5e-6):
        n = points_to_reach(target)
        assert 2 * Z_95 / n**0.5 <= target
        for p in (0.5, 0.785398, 0.1):
            assert pi_statistics(round(p * n), n).half_width <= target * (1 + 1e-12)


def test_a_target_without_points_is_run_until_it_is_reached() -> None:
    """The README's ``mcpi estimate --target-error 1e-4``: at the old default of 1e9
    points the half-width is ~1.018e-4 for any seed. (Made-up counts, p = 0.785398,
    so the 1e9 points cost nothing but the coordinator's work.)"""
    run = mcpi("estimate", "--target-error", "1e-4", "-s", "1", "-w", "2", "--json",
               "--worker-cmd", f"{FAKE_WORKER} --made-up-counts")  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["target_reached"] is True
    assert result["stopped_early"] == "target_error"
    assert 1_000_000_000 < result["points"] < result["requested_points"] == points_to_reach(1e-4)
    assert pi_statistics(result["inside"], result["points"]).half_width <= 1e-4


def test_a_target_no_run_may_reach_is_refused_at_once() -> None:
    run = mcpi("estimate", "--target-error", "1e-9")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == (
        "mcpi estimate: error: --target-error 1e-09 can take up to 1.54e+19 points, more than a run may draw "
        "(9,007,199,254,740,992); give --points N to stop after N points whatever the error "
        "(see 'mcpi estimate --help')\n"
    )


# ------------------------------------------------------------------ 4. output that agrees with itself


def _closing_line(screen: str) -> tuple[int, float, str]:
    line = next(line for line in screen.replace("\r", "\n").splitlines() if "points in" in line)
    match = re.search(r"(?:sampled|after) ([\d,]+) points in ([\d.]+) s \(([\d.]+ [kMG]?) ?points/s\)", line)
    assert match is not None, line
    return int(match[1].replace(",", "")), float(match[2]), match[3].strip()


def test_the_closing_line_says_what_the_table_says() -> None:
    """'sampled 1,000,000,000 points in 3.1 s (393.3 M points/s)' over a table saying
    327.1 M: the line's rate left the workers' start-up out, the table's did not. One
    run, one clock: the closing line's figures are the table's."""
    code, screen = in_terminal(["estimate", "-n", "4e5", "--chunk-size", "1e4", "-w", "2", "-s", "1",
                                "--worker-cmd", f"{FAKE_WORKER} --slow 0.02"])  # fmt: skip
    assert code == 0, screen
    points, seconds, rate = _closing_line(screen)
    rows = rows_of(screen)
    assert points == 400_000
    assert rate == rows["points/s"]
    wall = float(rows["wall time"].removesuffix(" s"))
    assert seconds == round(wall, 1)


def _checkpoint_of(path: Path, done: range, *, points: int, chunk: int, seed: int) -> None:
    """A checkpoint holding chunks ``done`` of a run, counted as a worker counts them."""
    checkpoint = Checkpoint.create(path, RunParameters(seed, points, chunk, "numpy", None, None))
    for stream in done:
        checkpoint.record(stream, count_numpy(seed, stream, chunk))
    checkpoint.close()


@pytest.mark.slow
def test_the_bar_of_a_resumed_run_starts_where_the_run_is(tmp_path: Path) -> None:
    """Six of ten chunks saved: the bar shows 60% or more from its first frame (it
    showed 0%, rising to 40%, while its ± already counted the six)."""
    path = tmp_path / "run.ckpt"
    _checkpoint_of(path, range(6), points=10_000, chunk=1_000, seed=4)
    code, screen = in_terminal(["estimate", "--resume", str(path), "-w", "1",
                                "--worker-cmd", f"{FAKE_WORKER} --slow 0.6"])  # fmt: skip
    assert code == 0, screen
    shown = [int(p) for p in re.findall(r"━+ +(\d+)%", screen)]
    assert shown, f"no bar was drawn: {screen!r}"
    assert min(shown) >= 60, shown
    points, _, rate = _closing_line(screen)
    assert points == 4_000  # what this run computed, at the rate the table shows
    assert rate == rows_of(screen)["points/s"]


def test_a_finished_run_resumed_says_nothing_was_computed(tmp_path: Path) -> None:
    """It printed 'workers 0', 'wall time 0.000 s', 'points/s 0'."""
    path = tmp_path / "run.ckpt"
    _checkpoint_of(path, range(3), points=3_000, chunk=1_000, seed=4)
    run = mcpi("estimate", "--resume", str(path))
    assert run.returncode == 0, run.stderr
    rows = rows_of(run.stdout)
    assert rows["workers"] == "none needed: every chunk came from the checkpoint"
    assert rows["points/s"] == "none computed: every counted chunk came from the checkpoint"
    assert "checkpoint: " in run.stdout and "(3 chunks saved, 3 of them from before)" in run.stdout


def test_one_chunk_is_one_chunk(tmp_path: Path) -> None:
    run = mcpi("estimate", "-n", "1000", "-w", "2", "-s", "1", "--verify", "1",
               "--checkpoint", str(tmp_path / "one.ckpt"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "1 chunk checked on a second worker" in run.stdout
    assert "(1 chunk saved)" in run.stdout


@pytest.mark.slow
def test_the_kernel_row_names_what_counted() -> None:
    """The workers said numba-fused counted; the row said 'numpy'."""
    run = mcpi("estimate", "-n", "2e6", "-w", "1", "-s", "1", "--startup-timeout", "300",  # a first compile
               env={"MCPI_NUMPY_IMPL": "fused"})
    assert run.returncode == 0, run.stderr
    assert rows_of(run.stdout)["kernel"] == "numpy (numba-fused)"
    plain = mcpi("estimate", "-n", "2e6", "-w", "1", "-s", "1", env={"MCPI_NUMPY_IMPL": "numpy"})
    assert rows_of(plain.stdout)["kernel"] == "numpy"


# ------------------------------------------------------------------ 8. the smaller ones


def _one_line(run: subprocess.CompletedProcess[str], line: str) -> None:
    assert (run.returncode, run.stdout, run.stderr) == (2, "", line + "\n")


def test_a_directory_as_checkpoint_is_named_as_one(tmp_path: Path) -> None:
    """It suggested '--resume /tmp'."""
    _one_line(
        mcpi("estimate", "-n", "1000", "--checkpoint", str(tmp_path)),
        f"mcpi estimate: error: checkpoint {tmp_path} is a directory; name a new file in it, "
        f"e.g. --checkpoint {tmp_path / 'run.ckpt'}",
    )
    _one_line(
        mcpi("estimate", "--resume", str(tmp_path)),
        f"mcpi estimate: error: checkpoint {tmp_path} is a directory, not a checkpoint file",
    )


def test_combine_of_a_binary_file_or_of_other_json_says_what_it_is(tmp_path: Path) -> None:
    """It said "'utf-8' codec can't decode byte 0xf8" and "seed is missing, not a whole
    number >= 0"."""
    binary = tmp_path / "picture.json"
    binary.write_bytes(bytes(range(128, 256)))
    _one_line(
        mcpi("combine", str(binary)),
        f"mcpi combine: error: {binary}: not text, so not the JSON mcpi estimate --part I/K --json prints",
    )
    fake = tmp_path / "fake.json"
    fake.write_text('{"pi": 3.14}')
    _one_line(
        mcpi("combine", str(fake)),
        f"mcpi combine: error: {fake}: not the JSON mcpi estimate --part I/K --json prints (it has no 'seed')",
    )


def test_the_self_check_says_it_compiles_before_it_waits() -> None:
    """'mcpi-worker --self-check' ("in a second") sat silent for 4-8 s the first time."""
    process = subprocess.Popen(
        [sys.executable, "-m", "mcpi_worker", "--self-check"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**CLEAN_ENV, "MCPI_NUMPY_IMPL": "auto"},
    )  # fmt: skip
    assert process.stdout is not None
    lines = [process.stdout.readline(), process.stdout.readline()]
    process.communicate(timeout=300)
    assert process.returncode == 0
    assert lines[1].startswith("  loading      numba-fused (compiled the first time, several seconds"), lines

