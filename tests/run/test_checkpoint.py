"""Checkpoints: what they hold, every way one is refused, and runs that resume exactly
(in-process fakes; the real command, SIGKILL included, is in test_cli_checkpoint.py)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from second_user import as_second_user, second_user, shared_directory

from mcpi_coordinator import __version__
from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.run.checkpoint import FORMAT, Checkpoint, CheckpointRefused, RunParameters
from mcpi_coordinator.run.estimate import EstimateResult, run_estimate
from mcpi_coordinator.run.prefix import reference_prefix
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import by_launch, fake_launcher

PARAMETERS = RunParameters(
    seed=2**64 - 1, points=1_000_000, chunk_size=10_000, kernel="numpy", target_error=None
)


def filled(path: Path, parameters: RunParameters = PARAMETERS, rows: int = 30) -> None:
    with Checkpoint.create(path, parameters) as checkpoint:
        for stream in range(rows):
            checkpoint.record(stream, 7_000 + stream)


def refused(path: Path) -> str:
    with pytest.raises(CheckpointRefused) as caught:
        Checkpoint.resume(path).close()
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def edit(path: Path, sql: str, *args: Any) -> None:
    connection = sqlite3.connect(path)
    connection.execute(sql, args)
    connection.commit()
    connection.close()


# ---------------------------------------------------------------------- contents


def test_a_checkpoint_keeps_its_parameters_versions_and_chunks(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint.create(path, PARAMETERS) as checkpoint:
        checkpoint.commit_every_s = 3600  # batched: nothing is written until close
        for stream in (2, 0, 1):
            checkpoint.record(stream, 100 + stream)
        assert checkpoint.commits == 0 and checkpoint.saved == 0
    assert checkpoint.commits == 1 and checkpoint.saved == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.db"]  # no -wal, -shm or partial left
    with Checkpoint.resume(path) as again:
        assert again.parameters == PARAMETERS
        assert list(again.stored()) == [(0, 100), (1, 101), (2, 102)]
    meta = dict(sqlite3.connect(path).execute("SELECT key, value FROM meta"))
    assert json.loads(meta["format"]) == FORMAT and json.loads(meta["mcpi_version"]) == __version__
    assert json.loads(meta["kernel_version"]) == 1 and json.loads(meta["seed"]) == 2**64 - 1


def test_commits_come_in_batches_at_most_every_interval(tmp_path: Path) -> None:
    with Checkpoint.create(tmp_path / "run.db", PARAMETERS) as checkpoint:
        checkpoint.commit_every_s = 0.0  # every record commits
        checkpoint.record(0, 1)
        checkpoint.record(1, 1)
        assert (checkpoint.commits, checkpoint.saved) == (2, 2)
        checkpoint.commit_every_s = 3600
        for stream in range(2, 50):
            checkpoint.record(stream, 1)
        assert (checkpoint.commits, checkpoint.saved) == (2, 2)
        checkpoint.forget([1, 3])  # committed at once
        assert checkpoint.saved == 1
    with Checkpoint.resume(tmp_path / "run.db") as again:
        assert [s for s, _ in again.stored()] == [0, 2, *range(4, 50)]


# ---------------------------------------------------------------------- refusals


def test_an_existing_file_is_never_overwritten_by_a_new_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    path.write_text("my thesis")
    with pytest.raises(CheckpointRefused, match=r"already exists: carry that run on with --resume"):
        Checkpoint.create(path, PARAMETERS)
    assert path.read_text() == "my thesis"
    with pytest.raises(CheckpointRefused, match=r"cannot create checkpoint .*: no directory"):
        Checkpoint.create(tmp_path / "no" / "such" / "dir.db", PARAMETERS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.db"]


def test_a_new_checkpoint_over_a_real_second_users_file_does_not_offer_to_resume_it() -> None:
    """--resume refuses another user's checkpoint; the refusal of --checkpoint offered it."""
    other = second_user()
    with shared_directory() as shared:
        path = shared / "run.db"
        as_second_user(["sh", "-c", f"echo their run > {path}"])
        with pytest.raises(CheckpointRefused) as refused:
            Checkpoint.create(path, PARAMETERS)
        assert str(refused.value) == (
            f"checkpoint {path} already exists and belongs to another user (uid {other.pw_uid}): choose a new file"
        )
        assert path.read_text() == "their run\n"


def test_leftovers_of_runs_killed_while_creating_a_checkpoint_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale = tmp_path / f".run.db.{int(dead.stdout)}.partial"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".run.db.{os.getppid()}.partial"  # a run still creating it
    alive.write_bytes(b"")
    Checkpoint.create(tmp_path / "run.db", PARAMETERS).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, "run.db"])


def test_a_missing_file_is_refused_with_how_to_start_it(tmp_path: Path) -> None:
    assert "no checkpoint at" in refused(tmp_path / "nothing.db")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an mcpi checkpoint"),
        (b"hello, this is not a database at all" * 40, "corrupt or not a checkpoint: file is not a database"),
    ],
)
def test_files_that_are_not_checkpoints_are_refused_and_left_alone(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "run.db"
    path.write_bytes(content)
    assert message in refused(path)
    assert path.read_bytes() == content  # checked before anything was changed


def test_an_sqlite_file_of_someone_else_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    edit(path, "CREATE TABLE songs (title TEXT)")
    assert "not an mcpi checkpoint (it has no run parameters)" in refused(path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.02])
def test_a_truncated_checkpoint_is_refused(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "run.db"
    filled(path, rows=100)
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.truncate(int(size * keep))
    assert "corrupt" in refused(path)


def test_a_count_changed_inside_the_file_fails_its_check(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    filled(path)
    edit(path, "UPDATE chunks SET inside = inside + 1 WHERE stream = 17")
    assert "corrupt: chunk 17 fails its check" in refused(path)


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE chunks SET stream = 1000 WHERE stream = 3", "chunk 1000 fails its check"),  # no such chunk
        ("UPDATE meta SET value = '{' WHERE key = 'seed'", "parameters are not readable"),
        ("UPDATE meta SET value = '-4' WHERE key = 'chunk_size'", "run parameters are invalid"),
        ("DELETE FROM meta WHERE key = 'points'", "run parameters are invalid"),
        ("UPDATE meta SET value = '\"fortran\"' WHERE key = 'kernel'", "kernel 'fortran', unknown here"),
        ("UPDATE meta SET value = '2' WHERE key = 'kernel_version'", "version 2 of the numpy kernel"),
        (f"UPDATE meta SET value = '{FORMAT + 1}' WHERE key = 'format'", "written by a newer mcpi"),
        ("UPDATE meta SET value = '\"99.0.0\"' WHERE key = 'mcpi_version'", "by a newer mcpi (99.0.0"),
        ("UPDATE meta SET value = '\"0.0.1\"' WHERE key = 'mcpi_version'", "written by mcpi 0.0.1, this is"),
        ("UPDATE meta SET value = '0' WHERE key = 'format'", "has format 0, which mcpi"),
    ],
)
def test_checkpoints_with_other_versions_or_bad_parameters_are_refused(
    tmp_path: Path, sql: str, message: str
) -> None:
    path = tmp_path / "run.db"
    filled(path)
    edit(path, sql)
    assert message in refused(path)


def test_a_checkpoint_in_use_by_another_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    filled(path)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from mcpi_coordinator.run.checkpoint import Checkpoint; "
         "c = Checkpoint.resume(sys.argv[1]); print('locked', flush=True); sys.stdin.read(); c.close()",
         str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert "in use by another mcpi run" in refused(path)
    finally:
        holder.communicate("", timeout=30)
    with Checkpoint.resume(path) as again:  # released when its holder closed it
        assert again.held == 30


# ---------------------------------------------------------------------- resuming runs

POINTS, CHUNK, SEED = 400_000, 5_000, 77  # 80 chunks


async def estimate(behaviour: Any, checkpoint: Checkpoint, **options: Any) -> EstimateResult:
    outcome: EstimateResult | McpiError
    async with trio.open_nursery() as nursery:  # where the fakes run
        launcher = fake_launcher(nursery, behaviour)
        async with WorkerPool(2, launcher=launcher, backoff_s=0.01) as pool:
            try:
                outcome = await run_estimate(
                    pool, points=POINTS, seed=SEED, chunk_size=CHUNK, checkpoint=checkpoint, **options
                )
            except McpiError as error:
                outcome = error
    if isinstance(outcome, McpiError):
        raise outcome
    return outcome


async def test_runs_cut_short_again_and_again_resume_to_the_uninterrupted_count(
    tmp_path: Path, autojump_clock: object
) -> None:
    # Workers that crash every few chunks (restarts, retried chunks) and runs cut off
    # mid-flight, five times, before one that finishes.
    path = tmp_path / "run.db"
    reference = reference_prefix(SEED, POINTS, CHUNK)
    crashy = by_launch(*[FakeBehaviour(slow=0.1, crash_after=3)] * 6, then=FakeBehaviour(slow=0.1))
    parameters = RunParameters(SEED, POINTS, CHUNK, "numpy", None)
    checkpoint = Checkpoint.create(path, parameters)
    checkpoint.commit_every_s = 0.0
    saved = []
    for cut in range(5):
        with trio.fail_after(600):
            with trio.move_on_after(0.3 + 0.1 * cut):  # a kill, as far as the run can tell
                await estimate(crashy, checkpoint)
        checkpoint.close()
        checkpoint = Checkpoint.resume(path)
        checkpoint.commit_every_s = 0.0
        saved.append(checkpoint.held)
    assert 0 < saved[0] < saved[-1] < POINTS // CHUNK
    with trio.fail_after(600):
        result = await estimate(crashy, checkpoint)
    checkpoint.close()
    assert (result.inside, result.points) == (reference.inside, POINTS)
    assert result.resumed_chunks == saved[-1] and result.saved_chunks == POINTS // CHUNK


async def test_an_early_stop_resumes_to_the_same_stop(tmp_path: Path, autojump_clock: object) -> None:
    eps = 1e-2
    reference = reference_prefix(SEED, POINTS, CHUNK, target_error=eps)
    assert reference.stopped and 5 < reference.k < 80
    checkpoint = Checkpoint.create(tmp_path / "run.db", RunParameters(SEED, POINTS, CHUNK, "numpy", eps))
    with trio.fail_after(600):
        first = await estimate(FakeBehaviour(slow=0.05), checkpoint, max_time=0.3, target_error=eps)
        assert first.stopped_early == "max_time" and first.chunks < reference.k
        second = await estimate(FakeBehaviour(slow=0.05), checkpoint, target_error=eps)
    checkpoint.close()
    assert second.stopped_early == "target_error" and second.resumed_chunks >= first.chunks
    assert (second.chunks, second.inside) == (reference.k, reference.inside)
    with Checkpoint.resume(tmp_path / "run.db") as again:  # finished: no pool needed
        third = await run_estimate(
            None, points=POINTS, seed=SEED, chunk_size=CHUNK, target_error=eps, checkpoint=again
        )
    assert (third.inside, third.workers, third.resumed_chunks) == (reference.inside, 0, second.saved_chunks)


async def test_a_checkpoint_for_other_parameters_is_a_programming_error(tmp_path: Path) -> None:
    with Checkpoint.create(tmp_path / "run.db", PARAMETERS) as checkpoint, pytest.raises(ValueError):
        await run_estimate(None, points=5, seed=1, chunk_size=1, checkpoint=checkpoint)
