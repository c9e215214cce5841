"""Runs that repeat exactly, as users run them: real ``mcpi estimate`` and real workers.

Early stops report the prefix of streams 0..k−1, so their count is the plain
``--points k·C`` run's, whatever the number of workers.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

import pytest
from command_line import estimate_json, mcpi

from mcpi_coordinator.run.prefix import reference_prefix


def repeated(result: dict[str, Any]) -> dict[str, Any]:
    """Run the command the result names as its repeat, and return its JSON."""
    command = shlex.split(result["repeat_command"])
    assert command[:2] == ["mcpi", "estimate"]
    again = estimate_json(*command[2:], "--workers", "2")
    assert again["stopped_early"] is None and again["points"] == result["repeat_points"]
    return again


@pytest.mark.slow
def test_target_error_stops_at_the_same_count_on_1_2_and_3_workers_and_repeats() -> None:
    args = ("--points", "1e9", "--chunk-size", "1e4", "--seed", "42", "--target-error", "2e-3")
    runs = [estimate_json(*args, "--workers", str(w)) for w in (1, 2, 3, 3, 2)]
    reference = reference_prefix(42, 10**9, 10**4, target_error=2e-3)
    for run in runs:
        assert run["stopped_early"] == "target_error" and run["target_reached"] is True
        assert (run["inside"], run["points"]) == (reference.inside, reference.points)
        assert run["chunks"] == reference.k and run["repeat_points"] == reference.points
        assert run["ci95"][1] - run["ci95"][0] <= 2 * 2e-3
    assert {run["workers"] for run in runs} == {1, 2, 3}
    assert repeated(runs[0])["inside"] == reference.inside


@pytest.mark.slow
def test_max_time_reports_a_count_that_its_repeat_command_gives_on_1_2_and_3_workers() -> None:
    # Fakes computing the real kernel at a bounded pace (so the check here stays cheap),
    # then real workers, whose count the repeat command itself checks.
    # They answer three requests each and then never again, so a run has chunks to report
    # and stops at --max-time whatever the machine's speed; --max-time counts worker
    # start-up, and 10 s leaves a loaded machine room to start them.
    paced = f"{shlex.quote(sys.executable)} -m mcpi_coordinator.testing.fake_worker --slow 0.005 --hang-after 3"
    args = ("--points", "1e12", "--chunk-size", "1e5", "--seed", "7", "--max-time", "10", "--startup-timeout", "300")
    for workers in (1, 3):
        run = estimate_json(*args, "--workers", str(workers), "--worker-cmd", paced)
        assert run["stopped_early"] == "max_time" and run["target_reached"] is None
        assert run["points"] == run["chunks"] * 100_000 == run["repeat_points"]
        assert run["inside"] == reference_prefix(7, run["points"], 100_000).inside
    real = estimate_json(*args, "--workers", "2")
    assert real["stopped_early"] == "max_time" and real["chunks"] > 0
    assert repeated(real)["inside"] == real["inside"]


@pytest.mark.slow
def test_the_human_output_names_the_repeat_command_and_an_unreached_target() -> None:
    stopped = mcpi("estimate", "--points", "1e9", "--chunk-size", "1e4", "--seed", "3",
                   "--target-error", "5e-3", "--workers", "2")
    assert stopped.returncode == 0, stopped.stderr
    reference = reference_prefix(3, 10**9, 10**4, target_error=5e-3)
    line = next(line for line in stopped.stdout.splitlines() if line.startswith("repeat:"))
    assert f"mcpi estimate --points {reference.points} --seed 3 --chunk-size 10000 --kernel numpy" in line
    unreached = mcpi("estimate", "--points", "1e6", "--target-error", "1e-9", "--seed", "1", "--workers", "2")
    assert unreached.returncode == 0, unreached.stderr
    assert "1e-09 NOT reached" in unreached.stdout and "after all --points" in unreached.stdout
    assert "repeat:" not in unreached.stdout  # a full run repeats itself
    as_json = estimate_json("--points", "1e6", "--target-error", "1e-9", "--seed", "1", "--workers", "2")
    assert as_json["target_reached"] is False and as_json["stopped_early"] is None
    assert as_json["points"] == 10**6
