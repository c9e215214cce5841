"""``cli.runs``: what ``--checkpoint``, ``--resume``, ``--verify`` and ``--target-error``
do before a run starts, and what they add to its report. End to end (real runs, real
workers) in test_cli_checkpoint.py and test_cli_runs.py; here the module's contract,
with real checkpoint files and the parsed options built by hand."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from array import array
from pathlib import Path
from typing import Any

import pytest

from mcpi_coordinator.cli import runs
from mcpi_coordinator.pool.worker_pool import PoolStats
from mcpi_coordinator.run.checkpoint import Checkpoint, CheckpointRefused, RunParameters
from mcpi_coordinator.run.estimate import DEFAULT_CHUNK_SIZE, DEFAULT_POINTS, EstimateResult, Stop
from mcpi_coordinator.run.parts import Part
from mcpi_coordinator.run.statistics import points_to_reach
from mcpi_coordinator.run.verify import RetiredWorker, VerifyStats
from mcpi_worker.constants import DEFAULT_KERNEL


def options(**given: Any) -> argparse.Namespace:
    """``mcpi estimate``'s parsed options as its parser leaves them: None for each one
    not given (so that one given can be told from one left out)."""
    parsed: dict[str, Any] = dict.fromkeys([*runs.RUN_OPTIONS, "checkpoint", "resume"])
    return argparse.Namespace(**{**parsed, **given})


A_RESULT = EstimateResult(
    inside=31, points=40, requested_points=40, seed=1, chunk_size=10, kernel="numpy", workers=1,
    elapsed_s=0.1, stopped_early=None, pool=PoolStats(1, 1, 0, 4, 0, 0, ()),
    chunk_points=array("q", [10] * 4), chunk_inside=array("q", [8] * 4),
)  # fmt: skip


def result(**fields: Any) -> EstimateResult:
    return dataclasses.replace(A_RESULT, **fields)


# ----------------------------------------------------------------- --target-error


def test_a_target_without_points_runs_until_it_is_reached() -> None:
    args = options(target_error=1e-3)
    assert runs.fill_target_budget(args, most=10**12) is None
    assert args.points == points_to_reach(1e-3)


def test_a_target_that_may_need_more_points_than_allowed_is_refused_in_one_line() -> None:
    args = options(target_error=1e-7)
    refusal = runs.fill_target_budget(args, most=10**9)
    assert refusal is not None and "\n" not in refusal
    assert refusal.startswith("--target-error 1e-07 can take up to") and "give --points N" in refusal
    assert args.points is None


@pytest.mark.parametrize(
    "given", [{"points": 1000, "target_error": 1e-7}, {"resume": "run.ckpt", "target_error": 1e-7}, {}],
    ids=["points-given", "resumed", "no-target"],
)
def test_points_given_a_resumed_run_or_no_target_leave_the_points_alone(given: dict[str, Any]) -> None:
    args = options(**given)
    assert runs.fill_target_budget(args, most=10) is None
    assert args.points == given.get("points")


# ----------------------------------------------------------------- prepare


def test_a_new_run_gets_the_defaults_and_a_drawn_seed() -> None:
    args = options()
    prepared = runs.prepare(args)
    assert (args.points, args.chunk_size, args.kernel) == (DEFAULT_POINTS, DEFAULT_CHUNK_SIZE, DEFAULT_KERNEL)
    assert prepared.seed_drawn and prepared.seed == args.seed and 0 <= args.seed < 2**64
    assert prepared.checkpoint is None and prepared.saved_note() == ""
    prepared.close()  # nothing to close: no error


def test_a_seed_given_is_kept(tmp_path: Path) -> None:
    args = options(seed=7, points=100, checkpoint=str(tmp_path / "run.ckpt"))
    prepared = runs.prepare(args)
    try:
        assert (prepared.seed, prepared.seed_drawn) == (7, False)
        assert prepared.checkpoint is not None
        assert prepared.checkpoint.parameters == runs.parameters_of(args)
    finally:
        prepared.close()


def test_the_note_of_an_unfinished_run_says_how_to_carry_it_on(tmp_path: Path) -> None:
    path = tmp_path / "a run's file; rm -rf ~.ckpt"  # the note is pasted into a shell
    prepared = runs.prepare(options(seed=1, points=100, checkpoint=str(path)))
    try:
        note = prepared.saved_note()
    finally:
        prepared.close()
    assert note.startswith(f"; 0 chunks saved in {path}: carry on with: mcpi estimate --resume ")
    assert shlex.split(note.rpartition("--resume ")[2]) == [str(path)]


def _checkpoint(tmp_path: Path, **parameters: Any) -> Path:
    path = tmp_path / "run.ckpt"
    figures = RunParameters(seed=5, points=1000, chunk_size=100, kernel="numpy", target_error=None)
    Checkpoint.create(path, dataclasses.replace(figures, **parameters)).close()
    return path


def test_a_resumed_run_takes_its_parameters_from_the_file(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, target_error=1e-2, part=Part(2, 3))
    args = options(resume=str(path), points=1000)  # given, and the same: fine
    prepared = runs.prepare(args)
    try:
        assert (prepared.seed, prepared.seed_drawn) == (5, False)
        assert (args.seed, args.points, args.chunk_size, args.kernel) == (5, 1000, 100, "numpy")
        assert (args.target_error, args.part) == (1e-2, Part(2, 3))
    finally:
        prepared.close()


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"seed": 6}, "is a run with --seed 5, not --seed 6"),
        ({"points": 999}, "is a run with --points 1000, not --points 999"),
        ({"target_error": 1e-3}, "is a run with no --target-error, not --target-error 0.001"),
        ({"part": Part(1, 2)}, "is a run with no --part, not --part 1/2"),
    ],
)
def test_an_option_that_disagrees_with_the_file_is_refused_and_the_file_let_go(
    tmp_path: Path, given: dict[str, Any], words: str
) -> None:
    path = _checkpoint(tmp_path)
    with pytest.raises(CheckpointRefused) as refused:
        runs.prepare(options(resume=str(path), **given))
    assert words in str(refused.value) and "counts of two runs are never merged" in str(refused.value)
    again = runs.prepare(options(resume=str(path)))  # not left locked by the refusal
    again.close()


# ----------------------------------------------------------------- the report


def test_without_verify_there_is_no_row_and_the_json_says_none_was_done() -> None:
    assert runs.verify_row(result()) is None
    assert runs.verify_json(result()) == {
        "verify": 0.0, "verified_chunks": 0, "mismatches": 0, "local_checks": 0,
        "recomputed_chunks": 0, "wrong_workers": [],
    }  # fmt: skip


def test_the_verify_row_and_json_name_every_wrong_worker() -> None:
    wrong = RetiredWorker(slot=1, pid=42, host="node7", stream=3)
    stats = VerifyStats(0.25, verified_chunks=5, mismatches=1, local_checks=2, recomputed_chunks=4, retired=(wrong,))
    assert runs.verify_row(result(verification=stats)) == (
        "verified",
        "5 chunks checked on a second worker (--verify 0.25), 2 of them by the coordinator itself; "
        "1 mismatched; worker 1 (host node7, pid 42) was wrong on chunk 3 and retired; "
        "4 of its chunks computed again",
    )
    assert runs.verify_json(result(verification=stats))["wrong_workers"] == [
        {"slot": 1, "pid": 42, "host": "node7", "caught_on_chunk": 3}
    ]


def test_the_checkpoint_line() -> None:
    assert runs.checkpoint_line(result()) is None
    assert runs.checkpoint_line(result(checkpoint="run.ckpt", saved_chunks=1)) == "checkpoint: run.ckpt (1 chunk saved)"
    line = runs.checkpoint_line(
        result(checkpoint="my run.ckpt", saved_chunks=4, resumed_chunks=2, stopped_early=Stop.MAX_TIME)
    )
    assert line == (
        "checkpoint: my run.ckpt (4 chunks saved, 2 of them from before); "
        "carry on with: mcpi estimate --resume 'my run.ckpt'"
    )
