"""``mcpi estimate --verify`` as users run it: real workers beside one subprocess fake
that lies (``--wrong-count``), chosen per worker index through ``--worker-cmd``'s ``{i}``."""

from __future__ import annotations

import subprocess
from typing import Any

import command_line
import pytest
from command_line import FAKE_WORKER, estimate_json_and_stderr, slot_0_runs

from mcpi_coordinator.run.prefix import reference_prefix

POINTS, CHUNK, SEED = 20_000_000, 200_000, 12  # 100 chunks
RUN = ("--points", str(POINTS), "--chunk-size", str(CHUNK), "--seed", str(SEED))


def liar_at_0(lie: str) -> str:
    """A --worker-cmd: worker 0 is a fake that lies as ``lie`` says, the others real workers."""
    return slot_0_runs(f"{FAKE_WORKER} {lie}")


def mcpi(*args: str) -> subprocess.CompletedProcess[str]:
    return command_line.mcpi("estimate", *args, timeout=300)


def estimate_json(*args: str) -> tuple[dict[str, Any], str]:
    return estimate_json_and_stderr(*args, timeout=300)


EXPECTED = reference_prefix(SEED, POINTS, CHUNK).inside


@pytest.mark.parametrize(("verify", "lie", "workers"), [("1", "--wrong-count 1", "3"), ("0.1", "--wrong-count 5", "2")])
def test_a_lying_worker_is_caught_retired_and_named_and_the_count_is_exact(verify: str, lie: str, workers: str) -> None:
    """With a tenth checked, a liar is caught only if it counts a checked chunk, and the
    fake, counting in Python, is given few chunks beside real workers (2 of 100 in a
    third of the runs with three workers, none of them checked: the lie was taken, as
    the verify module says it may be). With two workers it counts every check of the
    other's chunks too, being the only other worker, so it is caught at the run's first
    checked chunk whoever computed it, and the coordinator's own count breaks the tie."""
    result, stderr = estimate_json(*RUN, "--workers", workers, "--verify", verify, "--worker-cmd", liar_at_0(lie))
    assert result["inside"] == EXPECTED
    assert result["verify"] == float(verify) and result["mismatches"] >= 1
    (retired,) = result["wrong_workers"]
    assert retired["slot"] == 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "worker_retired" in lines[0], stderr  # one warning
    assert f"pid {retired['pid']}" in lines[0] and f"host {retired['host']}" in lines[0]
    if verify == "1":
        assert result["verified_chunks"] == POINTS // CHUNK and result["recomputed_chunks"] == 0
    else:
        assert 0 < result["verified_chunks"] < POINTS // CHUNK and result["local_checks"] >= 1


@pytest.mark.slow
def test_without_verify_the_lie_is_taken_and_honest_workers_verify_clean() -> None:
    lied, _ = estimate_json(*RUN, "--workers", "3", "--worker-cmd", liar_at_0("--wrong-count 1"))
    assert lied["inside"] != EXPECTED and lied["verified_chunks"] == 0 and lied["mismatches"] == 0
    honest, stderr = estimate_json(*RUN, "--workers", "2", "--verify", "0.5")
    assert honest["inside"] == EXPECTED and stderr == ""
    assert honest["mismatches"] == 0 and honest["wrong_workers"] == [] and honest["local_checks"] == 0
    assert 30 < honest["verified_chunks"] < 70


@pytest.mark.slow
def test_the_human_output_says_what_was_checked_and_who_was_retired() -> None:
    run = mcpi(*RUN, "--workers", "3", "--verify", "1", "--worker-cmd", liar_at_0("--wrong-count 1"))
    assert run.returncode == 0, run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("verified"))
    assert "chunks checked on a second worker (--verify 1)" in row and "retired" in run.stdout


@pytest.mark.parametrize(("value", "message"), [("2", "more than 1"), ("-0.5", "must be 0 or more"),
                                                ("some", "is not a number")])
def test_a_bad_fraction_is_one_line_and_exit_2(value: str, message: str) -> None:
    run = mcpi("--verify", value)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and message in run.stderr
