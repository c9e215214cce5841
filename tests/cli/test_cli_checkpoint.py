"""``mcpi estimate --checkpoint`` / ``--resume`` as users run them: real coordinator, real
worker processes (paced fakes where timing matters), SIGKILL at random moments (the
process table checked after each), Ctrl-C, and every refusal as one line with exit 2."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import random
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from command_line import FAKE_WORKER, MCPI, mcpi, one_line_refusal
from second_user import second_user, shared_directory

from mcpi_coordinator.run.prefix import reference_prefix
from mcpi_coordinator.testing.processes import not_warming, still_running, wait_until_gone, workers_among
from mcpi_worker.kernels import count_numpy

POINTS, CHUNK, SEED = 400_000_000, 2_000_000, 31  # 200 chunks: ~1.6 s on 2 workers, after start-up
RUN = ("--points", str(POINTS), "--chunk-size", str(CHUNK), "--seed", str(SEED))
# Workers that take 20 ms a stream (and count it for real): a run lasts ~2 s on any machine,
# so a kill "mid-run" lands mid-run however fast the kernel is (real workers finished a
# CI run between its first commit and the kill).
PACED = ("--worker-cmd", f"{FAKE_WORKER} --slow 0.02")
ORPHAN_DEADLINE_S = 60.0  # a bound against a hang on a loaded CI box; the speed is benchmarks/fleet.py's


@functools.cache
def uninterrupted_inside() -> int:
    return reference_prefix(SEED, POINTS, CHUNK).inside


def start(*args: str) -> psutil.Popen:
    return psutil.Popen(
        [*MCPI, "estimate", "--json", "--workers", "2", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@dataclass(frozen=True)
class Kill:
    """When to SIGKILL a run: ``after_s`` seconds after it started, or (``after_s`` None)
    ``extra_s`` seconds after its first commit (its write-ahead log grew)."""

    after_s: float | None
    extra_s: float = 0.0


def run_or_kill(args: tuple[str, ...], kill: Kill | None, wal: Path) -> dict[str, Any] | None:
    """Run ``mcpi estimate``; SIGKILL it when ``kill`` says unless it ended first.
    Returns its JSON if it finished, None if it was killed (after checking that none of
    its workers outlived it: numba's cache-warming process, meant to outlive the run, is
    no worker)."""
    wal_at_start = wal.stat().st_size if wal.exists() else 0  # kept from a killed run
    process = start(*args)
    workers: set[int] = set()
    started = time.monotonic()
    kill_at = None if kill is None or kill.after_s is None else started + kill.after_s
    try:
        while process.poll() is None and time.monotonic() - started < 300:
            try:
                workers.update(child.pid for child in process.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
            if kill is not None and kill_at is None and wal.exists() and wal.stat().st_size > wal_at_start:
                kill_at = time.monotonic() + kill.extra_s  # it has committed: mid-run from here
            if kill_at is not None and time.monotonic() >= kill_at:
                break
            time.sleep(0.005)
        # Not numba's cache-warming process, which mcpi estimate starts when the cache is
        # cold, meant to outlive the run; judged now: a child just forked has its parent's name.
        workers = set(not_warming(workers))
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
            left, _ = wait_until_gone(workers, ORPHAN_DEADLINE_S)
            assert not left, f"workers {left} outlived their SIGKILLed coordinator"
            return None
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        for pid in still_running(workers):  # never leak into CI, whatever failed
            psutil.Process(pid).kill()
    assert process.returncode == 0, err
    assert not still_running(workers)
    return json.loads(out)


@pytest.mark.slow
@pytest.mark.parametrize("killer", [1, 2, 3])
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_count(
    tmp_path: Path, killer: int
) -> None:
    rng = random.Random(killer)
    path = tmp_path / "run.db"
    # Four runs SIGKILLed at random moments: early (before the file exists, while the
    # workers start) or mid-run (a random time after the run's first commit, so that on
    # a slow machine too it has work to lose), then one left to finish.
    early = Kill(after_s=rng.uniform(0.05, 0.8))
    mid_runs = [Kill(after_s=None, extra_s=rng.uniform(0.0, 0.6)) for _ in range(2)]
    either = rng.choice([Kill(rng.uniform(0.05, 0.8)), Kill(None, extra_s=rng.uniform(0.0, 0.6))])
    kills, result = 0, None
    for kill in [early, mid_runs[0], either, mid_runs[1], None]:
        args = ("--resume", str(path)) if path.exists() else ("--checkpoint", str(path), *RUN)
        result = run_or_kill((*args, *PACED), kill, tmp_path / "run.db-wal")
        if result is not None:
            break
        kills += 1
    assert result is not None and kills >= 3
    assert (result["inside"], result["points"], result["seed"]) == (uninterrupted_inside(), POINTS, SEED)
    assert result["checkpoint"] == str(path) and result["saved_chunks"] == POINTS // CHUNK
    assert 0 < result["resumed_chunks"] < POINTS // CHUNK  # the mid-run kills lost work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.db"]


@pytest.mark.slow
def test_ctrl_c_of_a_checkpointed_run_says_how_to_resume_it(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    process = start("--checkpoint", str(path), "--points", "1e13", "--chunk-size", "1e6", "--seed", "9")
    try:
        deadline = time.monotonic() + 120
        wal = tmp_path / "run.db-wal"
        while not wal.exists() or wal.stat().st_size == 0 or len(workers_among(process.children())) < 2:
            assert time.monotonic() < deadline, "the run never committed a chunk"
            time.sleep(0.05)  # until its first commit: some chunks are saved
        workers = [child.pid for child in workers_among(process.children())]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # "1 chunk saved" on a machine busy enough that only the first commit was made;
    # "2,214 chunks saved" with a fast kernel (the count has thousands separators).
    said = re.search(rf"(\d[\d,]*) chunks? saved in {re.escape(str(path))}: carry on with: "
                     rf"mcpi estimate --resume {re.escape(str(path))}$", err.strip())
    assert said is not None, err
    assert not wait_until_gone(workers, ORPHAN_DEADLINE_S)[0]
    saved = sqlite3.connect(path).execute("SELECT stream, inside FROM chunks ORDER BY stream").fetchall()
    assert len(saved) == int(said.group(1).replace(",", "")) >= 1
    # What was saved is what the kernel counts, chunk for chunk.
    assert saved == [(stream, count_numpy(9, stream, 10**6)) for stream, _ in saved]


@pytest.mark.slow
def test_max_time_then_resume_with_other_workers_gives_the_uninterrupted_count(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    # Each worker answers two requests, then never again: the run cannot end before
    # --max-time however fast the machine, nor lack chunks to save however slow (10 s is
    # room for a loaded machine to start the workers), whatever the clock does meanwhile.
    stalling = f"{shlex.quote(sys.executable)} -m mcpi_coordinator.testing.fake_worker --hang-after 2"
    run = mcpi("estimate", "--json", "--workers", "2", "--checkpoint", str(path), *RUN, "--max-time", "10",
               "--worker-cmd", stalling, "--startup-timeout", "300")
    assert run.returncode == 0, run.stderr
    first = json.loads(run.stdout)
    assert first["stopped_early"] == "max_time" and 0 < first["saved_chunks"] < 200
    human = mcpi("estimate", "--workers", "3", "--resume", str(path), "--seed", str(SEED))  # agreeing: fine
    assert human.returncode == 0, human.stderr
    summary = f"checkpoint: {path} (200 chunks saved, {first['saved_chunks']} of them from before)"
    assert summary in human.stdout
    again = mcpi("estimate", "--json", "--resume", str(path))  # nothing left: no worker started
    result = json.loads(again.stdout)
    assert result["inside"] == uninterrupted_inside() and result["workers"] == 0


@pytest.mark.slow
def test_refusals_are_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    done = mcpi("estimate", "--json", "--workers", "1", "--checkpoint", str(path), "--points", "1e6",
                "--seed", "4", "--target-error", "1e-2")
    assert done.returncode == 0, done.stderr

    def resume(*more: str) -> subprocess.CompletedProcess[str]:
        return mcpi("estimate", "--resume", str(path), *more)

    again = mcpi("estimate", "--checkpoint", str(path))
    one_line_refusal(again, "already exists: carry that run on with --resume")
    one_line_refusal(resume("--seed", "5"), "is a run with --seed 4, not --seed 5")
    one_line_refusal(resume("--points", "2e6"), "--points 1000000, not --points 2000000")
    one_line_refusal(resume("--kernel", "python"), "--kernel numpy, not --kernel python")
    one_line_refusal(resume("--target-error", "1e-3"), "--target-error 0.01, not --target-error 0.001")
    one_line_refusal(resume("--checkpoint", str(path)), "not allowed with argument")
    one_line_refusal(mcpi("estimate", "--resume", str(tmp_path / "none.db")), "no checkpoint at")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00garbage" * 1000)
    one_line_refusal(mcpi("estimate", "--resume", str(junk)), "corrupt or not a checkpoint")
    connection = sqlite3.connect(path)
    connection.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    connection.commit()
    connection.close()
    one_line_refusal(mcpi("estimate", "--resume", str(path)), "written by a newer mcpi")


def test_two_runs_on_one_checkpoint_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    first = start("--checkpoint", str(path), "--points", "1e13", "--seed", "2")
    try:
        deadline = time.monotonic() + 60
        while not path.exists() or len(workers_among(first.children())) < 2:
            assert time.monotonic() < deadline, "the first run never started"
            time.sleep(0.05)
        one_line_refusal(mcpi("estimate", "--resume", str(path)), "is in use by another mcpi run")
        assert first.poll() is None  # the first run is untouched
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130


SQLITE_SHARED_BYTES = (0x40000000 + 2, 510)
"""The byte range SQLite's readers lock (``fcntl``, F_RDLCK) in every database file: its
SHARED lock (sqlite3's os_unix.c: PENDING_BYTE + 2, SHARED_SIZE)."""


@contextlib.contextmanager
def _second_user_holding_a_read_lock(path: Path) -> Iterator[bytes]:
    """A process of the second user (a real one: forked, then its uid and groups given up)
    that opens ``path`` and holds SQLite's read lock on it while the block runs; yields
    b"L" if it holds it, b"R" if the file was refused to it."""
    other = second_user()
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.setgroups([])
            os.setgid(other.pw_gid)
            os.setuid(other.pw_uid)
            fd = os.open(path, os.O_RDONLY)
            start, length = SQLITE_SHARED_BYTES
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, length, start, os.SEEK_SET)
            os.write(ready_w, b"L")
        except OSError:
            os.write(ready_w, b"R")
        os.read(release_r, 1)
        os._exit(0)
    try:
        yield os.read(ready_r, 1)
    finally:
        os.write(release_w, b"x")
        os.waitpid(child, 0)
        for fd in (ready_r, ready_w, release_r, release_w):
            os.close(fd)


def _small_run_checkpointed(path: Path) -> None:
    made = mcpi("estimate", "-n", "4000", "--chunk-size", "1000", "-w", "1", "-s", "3", "-q",
                "--checkpoint", str(path), "--startup-timeout", "300", timeout=300)  # fmt: skip
    assert made.returncode == 0, made.stderr


def test_another_user_cannot_open_a_checkpoint_nor_lock_its_owner_out_of_resume() -> None:
    """Another user of the machine who could read a checkpoint (SQLite's own 0644 for a new
    file) could take SQLite's read lock on it and hold it: its owner's ``--resume`` was
    refused, "in use by another mcpi run", exit 2, for as long as they liked. Now the file
    is its owner's alone (0600): the second user, a real one, cannot open it, and the
    resume goes on. The checkpoint is made by a real run, in a directory both may use."""
    with shared_directory() as shared:
        path = shared / "run.db"
        _small_run_checkpointed(path)
        with _second_user_holding_a_read_lock(path) as held:
            resumed = mcpi("estimate", "--resume", str(path), "-q", "--startup-timeout", "300", timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert held == b"R", "the second user opened the checkpoint and locked it"
        assert path.stat().st_mode & 0o777 == 0o600


def test_a_checkpoint_another_user_holds_locked_is_refused_naming_them() -> None:
    """A checkpoint others can read (made before checkpoints were private, or chmod-ed):
    the refusal named "another mcpi run" when the lock was another user's process; now it
    names the process and its user, and how to keep them out."""
    with shared_directory() as shared:
        path = shared / "run.db"
        _small_run_checkpointed(path)
        path.chmod(0o644)
        with _second_user_holding_a_read_lock(path) as held:
            assert held == b"L"
            resumed = mcpi("estimate", "--resume", str(path), "-q", timeout=300)
        one_line_refusal(resumed, "is locked by process ")
        assert f"of another user ({second_user().pw_name}), which can read it: " in resumed.stderr
        assert f"'chmod 600 {path}' keeps others out" in resumed.stderr
