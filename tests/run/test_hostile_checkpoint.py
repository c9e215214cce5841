"""Issue 23, findings 1 and 6: checkpoints in a directory another user can write, and
crafted checkpoint files given to ``--resume``.

The second user is real: a process that has dropped to uid ``nobody`` (or another
unprivileged uid) plants the symlinks and files, in a sticky world-writable directory
as ``/tmp`` is. That needs root (CI runs as root); elsewhere those tests are skipped
and say why. ``fs.protected_symlinks`` does not help mcpi: SQLite resolves symlinks
itself, and the directory may be one the kernel does not protect.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from command_line import MCPI

from mcpi_coordinator import __version__
from mcpi_coordinator.run.checkpoint import Checkpoint, CheckpointFailed, CheckpointRefused, RunParameters

PARAMETERS = RunParameters(seed=7, points=1_000_000, chunk_size=10_000, kernel="numpy", target_error=None)
NOBODY = 65534
OTHER = 61_234  # a second unprivileged uid, for the attack on an unprivileged run

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="acting as a second user needs root (setuid); CI runs as root"
)


def as_user(uid: int) -> Callable[[], None]:
    def drop() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return drop


def attacker(script: str, uid: int = NOBODY) -> None:
    """Run ``script`` (sh: the interpreter running the tests may sit where another user
    cannot read it) as another user, as a separate process."""
    subprocess.run(
        ["/bin/sh", "-c", script], preexec_fn=as_user(uid), check=True, timeout=60, stdin=subprocess.DEVNULL
    )


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory like /tmp: everyone may create files, only owners remove theirs."""
    directory = Path(tempfile.mkdtemp(prefix="mcpi-shared-", dir="/tmp"))
    directory.chmod(0o1777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def victim() -> Iterator[Path]:
    """A file of root's that no one else may write, outside the shared directory."""
    directory = Path(tempfile.mkdtemp(prefix="mcpi-victim-"))
    directory.chmod(0o755)
    path = directory / "precious"
    path.write_bytes(b"root's own data\n")
    try:
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def one_line(error: BaseException, *expected: str) -> str:
    message = str(error)
    assert "\n" not in message and "\x1b" not in message, message
    for part in expected:
        assert part in message, message
    return message


# ---------------------------------------------------------------- finding 1: a shared directory


@needs_root
def test_symlinks_planted_for_the_temporary_name_are_never_followed(shared: Path, victim: Path) -> None:
    # Every name the old scheme could use for this process, and the next pids too.
    pid = os.getpid()
    attacker(f"for p in $(seq {pid - 50} {pid + 50}); do ln -s {victim} {shared}/.run.db.$p.partial; done")
    with Checkpoint.create(shared / "run.db", PARAMETERS) as checkpoint:
        checkpoint.record(0, 7_853)
    assert victim.read_bytes() == b"root's own data\n"
    status = (shared / "run.db").lstat()
    assert (status.st_uid, status.st_nlink) == (0, 1) and not (shared / "run.db").is_symlink()
    with Checkpoint.resume(shared / "run.db") as again:
        assert list(again.stored()) == [(0, 7_853)]


@needs_root
def test_a_partial_planted_writable_never_becomes_the_checkpoint(shared: Path) -> None:
    # The attacker's file, 0666, under the name the old scheme used: had it become the
    # checkpoint, its owner could rewrite the counts before --resume.
    attacker(f"umask 0; : > {shared}/.run.db.{os.getpid()}.partial")
    Checkpoint.create(shared / "run.db", PARAMETERS).close()
    status = (shared / "run.db").stat()
    assert status.st_uid == 0 and status.st_mode & 0o022 == 0
    assert (shared / f".run.db.{os.getpid()}.partial").stat().st_uid == NOBODY  # left alone


def in_child_as(uid: int, action: Callable[[], None]) -> str:
    """Run ``action`` in a forked child that has dropped to ``uid``: what it raised
    ('' if nothing), by type and message. (Forked rather than a new interpreter: the one
    running the tests may sit where another user cannot read it.)"""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(reader)
        outcome = ""
        try:
            as_user(uid)()
            action()
        except BaseException as error:  # reported to the parent, whatever it is
            outcome = f"{type(error).__name__}: {error}"
        os.write(writer, outcome.encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


@needs_root
def test_a_planted_partial_of_a_dead_pid_does_not_stop_an_unprivileged_run(shared: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    planted = shared / f".run.db.{int(dead.stdout)}.partial"
    attacker(f": > {planted}", uid=OTHER)
    assert in_child_as(NOBODY, lambda: Checkpoint.create(shared / "run.db", PARAMETERS).close()) == ""
    assert planted.exists() and (shared / "run.db").stat().st_uid == NOBODY


@needs_root
@pytest.mark.parametrize("suffix", ["-wal", "-journal"])
def test_a_planted_journal_symlink_refuses_creation_and_leaves_nothing(
    shared: Path, victim: Path, suffix: str
) -> None:
    attacker(f"ln -s {victim} {shared}/run.db{suffix}")
    with pytest.raises(CheckpointRefused) as caught:
        Checkpoint.create(shared / "run.db", PARAMETERS)
    one_line(caught.value, f"run.db{suffix} is a symlink", "remove it if it is yours")
    assert victim.read_bytes() == b"root's own data\n"
    assert sorted(p.name for p in shared.iterdir()) == [f"run.db{suffix}"]  # no run.db left behind


@needs_root
@pytest.mark.parametrize("suffix", ["-wal", "-journal"])
def test_another_users_journal_beside_a_checkpoint_is_refused_on_resume(shared: Path, suffix: str) -> None:
    # A rollback journal SQLite finds is replayed into the file as it opens; a WAL is
    # read as part of it: either would let their owner rewrite the counts.
    path = shared / "run.db"
    with Checkpoint.create(path, PARAMETERS) as checkpoint:
        checkpoint.record(0, 7_853)
    attacker(f"printf 'forged pages' > {path}{suffix}")
    with pytest.raises(CheckpointRefused) as caught:
        Checkpoint.resume(path)
    one_line(caught.value, f"run.db{suffix} belongs to another user (uid {NOBODY})")


def test_a_checkpoint_leaves_no_journal_and_a_killed_runs_wal_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    with Checkpoint.create(path, PARAMETERS) as checkpoint:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run.db", "run.db-journal", "run.db-wal"]
        checkpoint.record(0, 7_853)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.db"]
    # A run killed after a commit leaves its -wal, which holds that commit: it is read.
    killed = subprocess.run(
        [sys.executable, "-c",
         "import os, sys; from mcpi_coordinator.run.checkpoint import Checkpoint\n"
         "c = Checkpoint.resume(sys.argv[1]); c.record(1, 7_900); c.commit(); os._exit(9)", str(path)],
        check=False, timeout=60,
    )  # fmt: skip
    assert killed.returncode == 9 and (tmp_path / "run.db-wal").stat().st_size > 0
    with Checkpoint.resume(path) as again:
        assert list(again.stored()) == [(0, 7_853), (1, 7_900)]


# ---------------------------------------------------------------- finding 6: crafted files


def crafted(tmp_path: Path, sql: str = "", *args: Any, meta: dict[str, str] | None = None) -> Path:
    path = tmp_path / "run.db"
    with Checkpoint.create(path, PARAMETERS) as checkpoint:
        checkpoint.record(0, 7_853)
    connection = sqlite3.connect(path)
    if sql:
        connection.execute(sql, args)
    for key, value in (meta or {}).items():
        connection.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    connection.commit()
    connection.close()
    return path


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("CREATE TRIGGER boom AFTER INSERT ON chunks BEGIN SELECT RAISE(ABORT, 'boom'); END", "triggers"),
        (  # would keep the coordinator busy at every commit
            "CREATE TRIGGER slow AFTER INSERT ON chunks BEGIN SELECT count(*) FROM (WITH RECURSIVE "
            "c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c); END",
            "triggers",
        ),
        ("CREATE VIEW summary AS SELECT sum(inside) FROM chunks", "views"),
        ("CREATE TABLE notes (text TEXT)", "tables"),
        ("CREATE INDEX by_inside ON chunks (inside)", "indexes"),
    ],
)
def test_a_schema_with_anything_but_mcpis_tables_is_refused_before_a_statement_runs(
    tmp_path: Path, sql: str, what: str
) -> None:
    path = crafted(tmp_path, sql)
    with pytest.raises(CheckpointRefused) as caught:
        Checkpoint.resume(path)
    one_line(caught.value, f"its schema holds {what} mcpi never writes")


def test_a_table_of_ours_defined_otherwise_is_refused(tmp_path: Path) -> None:
    path = crafted(tmp_path)
    connection = sqlite3.connect(path)
    connection.executescript(
        "DROP TABLE chunks; CREATE TABLE chunks (stream INTEGER PRIMARY KEY, inside INTEGER NOT NULL, "
        "check_value INTEGER NOT NULL DEFAULT (random()))"
    )
    connection.close()
    with pytest.raises(CheckpointRefused) as caught:
        Checkpoint.resume(path)
    one_line(caught.value, "its schema holds tables mcpi never writes")


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        ({"seed": "9" * 5_000}, "corrupt: its parameters are not readable"),
        ({"points": str(10**100)}, "corrupt: its parameters are not readable"),
        ({"points": str(2**53 + 1)}, "corrupt: its run parameters are invalid"),
        ({"chunk_size": str(10**30)}, "corrupt: its run parameters are invalid"),
        ({"part": "[" * 100_000 + "]" * 100_000}, "corrupt: its parameters are not readable"),
        ({"mcpi_version": json.dumps("1" * 5_000)}, "corrupt: its parameters are not readable"),
        ({"mcpi_version": json.dumps("1." * 100)}, "not an mcpi checkpoint (no format or version in it)"),
        ({"mcpi_version": json.dumps(f"{__version__}\x1b]0;owned\x07\x1b[2J")}, "no format or version in it"),
        ({"kernel_version": json.dumps("1\x1b[31m")}, "its run parameters are invalid"),
        ({"target_error": "1e400"}, "corrupt: its parameters are not readable"),
    ],
)
def test_values_beyond_what_mcpi_writes_are_refused_in_one_line(
    tmp_path: Path, meta: dict[str, str], expected: str
) -> None:
    with pytest.raises(CheckpointRefused) as caught:
        Checkpoint.resume(crafted(tmp_path, meta=meta))
    one_line(caught.value, expected)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO meta WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 100) "
        "SELECT 'k' || i, '1' FROM n",
    ],
)
def test_more_parameters_than_mcpi_writes_are_refused(tmp_path: Path, sql: str) -> None:
    with pytest.raises(CheckpointRefused) as caught:
        Checkpoint.resume(crafted(tmp_path, sql))
    one_line(caught.value, "corrupt")


@pytest.mark.parametrize(
    ("target", "expected"),
    [("/dev/zero", "not a regular file"), ("fifo", "not a regular file"), ("directory", "is a directory")],
)
def test_a_resume_of_something_not_a_file_is_refused(tmp_path: Path, target: str, expected: str) -> None:
    path = Path(target)
    if target == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    elif target == "directory":
        path = tmp_path
    with pytest.raises(CheckpointRefused) as caught:
        Checkpoint.resume(path)
    one_line(caught.value, expected)


@pytest.mark.slow
def test_crafted_checkpoints_through_the_command_are_one_line_and_exit_2(tmp_path: Path) -> None:
    for name in ("points", "trigger", "deep"):
        (tmp_path / name).mkdir()
    cases = {
        "points": crafted(tmp_path / "points", meta={"points": str(10**100)}),
        "trigger": crafted(
            tmp_path / "trigger", "CREATE TRIGGER boom AFTER INSERT ON chunks BEGIN SELECT RAISE(ABORT, 'x'); END"
        ),
        "deep": crafted(tmp_path / "deep", meta={"part": "[" * 100_000 + "]" * 100_000}),
    }
    for name, path in cases.items():
        run = subprocess.run(
            [*MCPI, "estimate", "-w", "1", "--resume", str(path)],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        assert (run.returncode, run.stdout) == (2, ""), (name, run.stderr)
        assert len(run.stderr.splitlines()) == 1 and "Traceback" not in run.stderr, (name, run.stderr)


# ---------------------------------------------------------------- a full disk


def test_a_failed_commit_is_one_error_and_keeps_what_was_committed(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    checkpoint = Checkpoint.create(path, PARAMETERS)
    checkpoint.record(0, 7_853)
    checkpoint.commit()
    checkpoint._require_open().execute("PRAGMA max_page_count = 1")  # no room for another page
    for stream in range(1, 20_000):
        checkpoint.record(stream, 7_800)
    with pytest.raises(CheckpointFailed) as caught:
        checkpoint.commit()
    one_line(caught.value, f"cannot write checkpoint {path}: database or disk is full")
    assert checkpoint.saved == 1
    checkpoint.close()  # nothing left to commit: closes without another error
    with Checkpoint.resume(path) as again:
        assert list(again.stored()) == [(0, 7_853)]


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A 192 KiB tmpfs: room for a checkpoint to be created, not for a long run's rows."""
    directory = Path(tempfile.mkdtemp(prefix="mcpi-full-"))
    mount = ["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(directory)]
    mounted = subprocess.run(mount, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        directory.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
        directory.rmdir()


@pytest.mark.slow
def test_a_full_disk_during_a_run_is_one_line_with_the_resume_hint(tiny_disk: Path, tmp_path: Path) -> None:
    path = tiny_disk / "run.db"
    run = subprocess.run(
        [*MCPI, "estimate", "-n", "1e9", "--chunk-size", "1e3", "-w", "2", "-s", "7", "--checkpoint", str(path)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert (run.returncode, run.stdout) == (1, ""), run.stderr
    last = run.stderr.splitlines()[-1]
    assert "Traceback" not in run.stderr and "ExceptionGroup" not in run.stderr, run.stderr
    assert f"error: cannot write checkpoint {path}: database or disk is full" in last
    assert last.endswith(f"saved in {path}: carry on with: mcpi estimate --resume {path}")
    # What it holds is consistent: copied where there is room, it resumes, every row
    # checked, and it holds the chunks the line says. How many fit before the disk was
    # full depends on the machine's speed (a fast one fills it with its first commit).
    said = re.search(r"(\d[\d,]*) chunks? saved in ", last)
    assert said is not None, last
    for name in ("run.db", "run.db-wal"):
        if (tiny_disk / name).exists():
            shutil.copy(tiny_disk / name, tmp_path / name)
    with Checkpoint.resume(tmp_path / "run.db") as saved:
        assert saved.parameters.seed == 7
        assert saved.saved == int(said.group(1).replace(",", ""))


@needs_root
def test_a_checkpoint_another_user_owns_or_anyone_may_write_is_refused(shared: Path) -> None:
    # Its check values are CRCs: whoever can write the file can forge the counts.
    path = shared / "run.db"
    in_child_as(NOBODY, lambda: Checkpoint.create(path, PARAMETERS).close())
    with pytest.raises(CheckpointRefused) as caught:
        Checkpoint.resume(path)
    one_line(caught.value, f"belongs to another user (uid {NOBODY})", f"cp {path} mine.db")
    mine = shared / "mine.db"
    shutil.copy(path, mine)
    mine.chmod(0o666)
    with pytest.raises(CheckpointRefused) as caught:
        Checkpoint.resume(mine)
    one_line(caught.value, "may be written by anyone")
    mine.chmod(0o644)
    Checkpoint.resume(mine).close()


def test_a_directory_anyone_may_write_without_the_sticky_bit_is_refused(tmp_path: Path) -> None:
    # There anyone may rename anyone's files: no check on a name would hold.
    open_to_all = tmp_path / "scratch"
    open_to_all.mkdir()
    Checkpoint.create(open_to_all / "before.db", PARAMETERS).close()
    open_to_all.chmod(0o777)
    attempts = [
        lambda: Checkpoint.create(open_to_all / "run.db", PARAMETERS),
        lambda: Checkpoint.resume(open_to_all / "before.db"),
    ]
    for attempt in attempts:
        with pytest.raises(CheckpointRefused) as caught:
            attempt()
        one_line(caught.value, "may be written by anyone and has no sticky bit", "chmod +t")
    open_to_all.chmod(0o1777)
    Checkpoint.create(open_to_all / "run.db", PARAMETERS).close()
    Checkpoint.resume(open_to_all / "before.db").close()


# ---------------------------------------------------------------- a file larger than its run


@pytest.mark.parametrize("grown", ["sparse", "pages"])
def test_a_checkpoint_larger_than_its_run_could_be_is_refused_before_its_rows_are_read(
    tmp_path: Path, grown: str
) -> None:
    # PARAMETERS is a run of 100 chunks: mcpi writes ~20 bytes a chunk; a crafted file of
    # gigabytes would be read whole, row by row, before anything could refuse it.
    path = crafted(tmp_path)
    if grown == "sparse":
        os.truncate(path, 2**33)  # 8 GiB that take no disk
    else:  # pages SQLite counts: rows of a run it does not have, then deleted (free pages)
        connection = sqlite3.connect(path)
        connection.execute("PRAGMA journal_mode=DELETE")
        connection.execute(
            "INSERT INTO chunks WITH RECURSIVE n(i) AS (SELECT 1000 UNION ALL SELECT i + 1 FROM n LIMIT 200000) "
            "SELECT i, 1, 1 FROM n"
        )
        connection.execute("DELETE FROM chunks WHERE stream >= 1000")
        connection.commit()
        connection.close()
    with pytest.raises(CheckpointRefused) as caught:
        Checkpoint.resume(path)
    one_line(caught.value, "more than mcpi writes for a run of 100 chunks")
    run = subprocess.run(
        [*MCPI, "estimate", "-w", "1", "--resume", str(path)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert (run.returncode, run.stdout) == (2, ""), run.stderr
    assert len(run.stderr.splitlines()) == 1 and "Traceback" not in run.stderr, run.stderr


def test_a_checkpoint_of_many_chunks_written_in_any_order_is_within_the_bound(tmp_path: Path) -> None:
    parameters = RunParameters(seed=7, points=50_000 * 1_000, chunk_size=1_000, kernel="numpy", target_error=None)
    with Checkpoint.create(tmp_path / "run.db", parameters) as checkpoint:
        for stream in [*range(1, 50_000, 2), *range(0, 50_000, 2)]:
            checkpoint.record(stream, 700)
            if stream % 97 == 0:
                checkpoint.commit()
    with Checkpoint.resume(tmp_path / "run.db") as again:
        assert again.held == 50_000
