"""What survives the coordinator: completed chunks in an SQLite file, for ``--resume``.

A checkpoint holds a run's parameters (seed, points, chunk size, kernel, target, and
the ``--part I/K`` it counts, if any), the
versions that made its counts (mcpi, the kernel's definition, the file's format) and
one row per completed chunk: (stream, inside, check). Resuming rebuilds the prefix
from those rows and computes only what is missing, so a resumed run, after any number
of kills, ends with the count of an uninterrupted one: counts are a pure function of
(seed, stream, points, kernel), whoever computed them and whenever.

Why it costs nothing: rows are buffered and written in one transaction at most every
``COMMIT_EVERY_S`` (0.5 s), in WAL mode with ``synchronous=NORMAL``. A commit is then
one append to the write-ahead log, no fsync; a killed coordinator (even SIGKILL) loses
no committed row, since the data is in the kernel's page cache, and at most the last
half second of results, which are computed again. A power cut may lose the last
commits too, never the file's consistency.

Why it cannot be merged into a wrong answer: a file is refused, before anything
starts, when its format is not this mcpi's (a newer mcpi's file says so), when its
mcpi or kernel version differs, when SQLite finds it malformed (truncated files are),
and when any row fails its check (a CRC over seed, stream and count: bit rot inside a
value passes SQLite's own checks) or is impossible (an unknown stream, more inside
than points).

Why two runs cannot share a file: the connection takes SQLite's exclusive lock at
once (``locking_mode=EXCLUSIVE``) and holds it until it closes; a second run gets
"database is locked" at its first read and is refused. The lock is the kernel's, so
it dies with its process, SIGKILL included: a killed run never leaves a stale lock.
Exclusive mode also keeps WAL's index in memory instead of a ``-shm`` file.

A new checkpoint is written whole under a temporary name (``.NAME.PID.partial``) and
linked into place, so a run killed while creating it leaves no half-made file under
the user's name; the next ``--checkpoint NAME`` deletes such leftovers.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import sqlite3
import time
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Self

from mcpi_coordinator import __version__
from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.parts import Part
from mcpi_worker.kernels import KERNEL_VERSIONS

FORMAT: Final[int] = 1
"""The checkpoint format this mcpi writes and reads."""

COMMIT_EVERY_S: Final[float] = 0.5

_SCHEMA: Final[tuple[str, ...]] = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE chunks (stream INTEGER PRIMARY KEY, inside INTEGER NOT NULL, check_value INTEGER NOT NULL)",
)
"""One table of parameters and versions (JSON values: a seed may exceed SQLite's
64-bit signed integers), one row per completed chunk."""


class CheckpointRefused(McpiError):
    """A checkpoint that cannot be used as asked; ``str()`` is one line naming the file."""


@dataclass(frozen=True, slots=True)
class RunParameters:
    """What fixes a run's count and where it stops."""

    seed: int
    points: int
    chunk_size: int
    kernel: str
    target_error: float | None
    part: Part | None = None
    """The part of the run this checkpoint counts; None for all of it."""

    @property
    def total_chunks(self) -> int:
        return -(-self.points // self.chunk_size)

    @property
    def streams(self) -> range:
        """The chunks the checkpoint may hold: the run's, or its part's."""
        return range(self.total_chunks) if self.part is None else self.part.streams(self.total_chunks)

    def chunk_points(self, stream: int) -> int:
        return min(self.chunk_size, self.points - stream * self.chunk_size)


def check_value(seed: int, stream: int, inside: int) -> int:
    """The row's check: a CRC-32 over what the row claims, tied to its run's seed."""
    return zlib.crc32(f"{seed}/{stream}/{inside}".encode())


def _version_key(version: str) -> tuple[int, ...]:
    """``"0.10.2rc1"`` → (0, 10, 2): enough to tell which of two releases is newer."""
    release = version.split("+", maxsplit=1)[0]
    return tuple(int(part) for part in re.findall(r"\d+", release)[:3])


class Checkpoint:
    """An open checkpoint, locked for this run. Use ``create`` or ``resume``, then
    ``record`` each completed chunk; ``close`` commits what is buffered."""

    def __init__(self, path: Path, connection: sqlite3.Connection, parameters: RunParameters) -> None:
        self.path = path
        self.parameters = parameters
        self.commit_every_s = COMMIT_EVERY_S
        self.saved = 0
        """Chunks committed to the file."""
        self.commits = 0
        self._connection: sqlite3.Connection | None = connection
        self._buffer: list[tuple[int, int, int]] = []
        self._last_commit = time.monotonic()
        # Every chunk the file holds or will hold once committed, so that one open
        # checkpoint serves several runs in turn; compact (8 bytes a number).
        self._streams = array("q")
        self._insides = array("q")

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(cls, path: str | os.PathLike[str], parameters: RunParameters) -> Self:
        """A new checkpoint at ``path`` for a run of ``parameters``; refused if the file exists."""
        target = Path(path)
        if target.exists() or target.is_symlink():
            raise CheckpointRefused(
                f"checkpoint {target} already exists: carry that run on with --resume {target}, "
                "or choose a new file"
            )
        if not target.parent.is_dir():
            raise CheckpointRefused(f"cannot create checkpoint {target}: no directory {target.parent}")
        if parameters.kernel not in KERNEL_VERSIONS:
            raise ValueError(f"no kernel version for {parameters.kernel!r}")
        _remove_stale_partials(target)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            connection = sqlite3.connect(partial, isolation_level=None)
            try:
                # No fsync per step while the file is private: one fsync of the whole
                # file below, before it takes the user's name, is as durable.
                connection.execute("PRAGMA synchronous=OFF")
                connection.execute("PRAGMA journal_mode=WAL")  # recorded in the file itself
                connection.execute("BEGIN")
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [(key, json.dumps(value)) for key, value in _meta(parameters).items()],
                )
                connection.execute("COMMIT")
            finally:
                connection.close()  # folds the WAL into the file: one file to link
            with partial.open("rb+") as written:
                os.fsync(written.fileno())
            try:
                os.link(partial, target)
            except FileExistsError:
                raise CheckpointRefused(f"checkpoint {target} was created meanwhile by another run") from None
        except (OSError, sqlite3.Error) as error:
            raise CheckpointRefused(f"cannot create checkpoint {target}: {_reason(error)}") from None
        finally:
            partial.unlink(missing_ok=True)
        return cls._open(target, expect=parameters)

    @classmethod
    def resume(cls, path: str | os.PathLike[str]) -> Self:
        """The checkpoint at ``path``, checked whole and locked; its rows in ``stored``."""
        target = Path(path)
        if not target.exists():
            raise CheckpointRefused(
                f"no checkpoint at {target}: start the run with --checkpoint {target}"
            )
        return cls._open(target, expect=None)

    @classmethod
    def _open(cls, path: Path, *, expect: RunParameters | None) -> Self:
        try:
            # timeout=0: a file another run holds is refused at once, not waited for.
            connection = sqlite3.connect(path, timeout=0, isolation_level=None)
        except sqlite3.Error as error:
            raise CheckpointRefused(f"cannot open checkpoint {path}: {_reason(error)}") from None
        try:
            connection.execute("PRAGMA locking_mode=EXCLUSIVE")
            connection.execute("BEGIN EXCLUSIVE")  # the lock, held until close
            parameters = _read_parameters(connection, path)
            if expect is not None and parameters != expect:
                raise CheckpointRefused(f"checkpoint {path} changed while it was being created")
            stored = _read_chunks(connection, path, parameters)
            connection.execute("COMMIT")
            # Checked first, changed after: only now is the file known to be ours.
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise CheckpointRefused(f"checkpoint {path}: cannot use write-ahead logging ({mode})")
            connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as error:
            connection.close()
            if "locked" in str(error):
                raise CheckpointRefused(
                    f"checkpoint {path} is in use by another mcpi run (one run per file)"
                ) from None
            raise CheckpointRefused(f"checkpoint {path} cannot be read: {_reason(error)}") from None
        except sqlite3.DatabaseError as error:
            connection.close()
            raise CheckpointRefused(
                f"checkpoint {path} is corrupt or not a checkpoint: {_reason(error)}"
            ) from None
        except BaseException:
            connection.close()
            raise
        checkpoint = cls(path, connection, parameters)
        checkpoint._streams = array("q", [stream for stream, _ in stored])
        checkpoint._insides = array("q", [inside for _, inside in stored])
        checkpoint.saved = len(stored)
        return checkpoint

    # ------------------------------------------------------------------ use

    def stored(self) -> Iterator[tuple[int, int]]:
        """Every chunk held as (stream, inside): those read when it was opened, then
        those recorded since."""
        return zip(self._streams, self._insides, strict=True)

    @property
    def held(self) -> int:
        """Chunks held: ``saved`` plus those recorded and not yet committed."""
        return len(self._streams)

    def record(self, stream: int, inside: int) -> None:
        """Keep a completed chunk; committed with others at most every ``commit_every_s``."""
        self._buffer.append((stream, inside, check_value(self.parameters.seed, stream, inside)))
        self._streams.append(stream)
        self._insides.append(inside)
        if time.monotonic() - self._last_commit >= self.commit_every_s:
            self.commit()

    def forget(self, streams: Iterable[int]) -> None:
        """Delete chunks (their worker was caught lying), committed at once."""
        doomed = set(streams)
        self._buffer = [row for row in self._buffer if row[0] not in doomed]
        kept = [(s, i) for s, i in self.stored() if s not in doomed]
        self._streams = array("q", [s for s, _ in kept])
        self._insides = array("q", [i for _, i in kept])
        connection = self._require_open()
        connection.execute("BEGIN")
        before = connection.total_changes
        connection.executemany("DELETE FROM chunks WHERE stream = ?", [(s,) for s in sorted(doomed)])
        self.saved -= connection.total_changes - before
        connection.execute("COMMIT")

    def commit(self) -> None:
        """Write the buffered rows in one transaction."""
        connection = self._require_open()
        self._last_commit = time.monotonic()
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO chunks (stream, inside, check_value) VALUES (?, ?, ?)", rows)
        connection.execute("COMMIT")
        self.saved += len(rows)
        self.commits += 1

    def close(self) -> None:
        """Commit what is buffered and release the file (and its lock). Idempotent."""
        if self._connection is None:
            return
        try:
            self.commit()
        finally:
            self._connection.close()
            self._connection = None

    @property
    def resume_command(self) -> str:
        return f"mcpi estimate --resume {self.path}"

    def _require_open(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError(f"checkpoint {self.path} is closed")
        return self._connection

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- reading


def _meta(parameters: RunParameters) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "mcpi_version": __version__,
        "kernel_version": KERNEL_VERSIONS[parameters.kernel],
        **asdict(parameters),
    }


def _read_parameters(connection: sqlite3.Connection, path: Path) -> RunParameters:
    if connection.execute("PRAGMA quick_check").fetchone() != ("ok",):
        raise CheckpointRefused(f"checkpoint {path} is corrupt (SQLite's quick_check failed)")
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"meta", "chunks"} <= tables:
        raise CheckpointRefused(f"{path} is not an mcpi checkpoint (it has no run parameters)")
    try:
        meta = {key: json.loads(value) for key, value in connection.execute("SELECT key, value FROM meta")}
    except (json.JSONDecodeError, TypeError):
        raise CheckpointRefused(f"checkpoint {path} is corrupt: its parameters are not readable") from None
    written_by = meta.get("mcpi_version")
    fmt = meta.get("format")
    if not isinstance(fmt, int) or not isinstance(written_by, str):
        raise CheckpointRefused(f"{path} is not an mcpi checkpoint (no format or version in it)")
    if fmt > FORMAT or (fmt == FORMAT and _version_key(written_by) > _version_key(__version__)):
        raise CheckpointRefused(
            f"checkpoint {path} was written by a newer mcpi ({written_by}, format {fmt}); "
            f"this is mcpi {__version__} (format {FORMAT}): resume it with mcpi {written_by}"
        )
    if fmt != FORMAT:
        raise CheckpointRefused(
            f"checkpoint {path} has format {fmt}, which mcpi {__version__} does not read (it reads {FORMAT})"
        )
    if written_by != __version__:
        raise CheckpointRefused(
            f"checkpoint {path} was written by mcpi {written_by}, this is mcpi {__version__}: "
            f"counts of two versions are not merged; resume it with mcpi {written_by}"
        )
    try:
        parameters = RunParameters(
            seed=_whole(meta["seed"], 0, 2**64),
            points=_whole(meta["points"], 1, None),
            chunk_size=_whole(meta["chunk_size"], 1, None),
            kernel=str(meta["kernel"]),
            target_error=_target(meta["target_error"]),
            part=_part(meta.get("part")),  # absent in files of whole runs written before parts
        )
        kernel_version = meta["kernel_version"]
        if parameters.part is not None and parameters.part.of > parameters.total_chunks:
            raise ValueError(parameters.part)  # more parts than the run has chunks
    except (KeyError, ValueError, TypeError):
        raise CheckpointRefused(f"checkpoint {path} is corrupt: its run parameters are invalid") from None
    ours = KERNEL_VERSIONS.get(parameters.kernel)
    if ours is None:
        raise CheckpointRefused(f"checkpoint {path} is for kernel {parameters.kernel!r}, unknown here")
    if kernel_version != ours:
        raise CheckpointRefused(
            f"checkpoint {path} was counted by version {kernel_version} of the {parameters.kernel} kernel, "
            f"this mcpi has version {ours}: its counts would not match"
        )
    return parameters


def _read_chunks(
    connection: sqlite3.Connection, path: Path, parameters: RunParameters
) -> list[tuple[int, int]]:
    stored = []
    streams = parameters.streams
    for stream, inside, check in _rows(connection):
        valid = (
            isinstance(stream, int) and isinstance(inside, int) and stream in streams
            and 0 <= inside <= parameters.chunk_points(stream)
            and check == check_value(parameters.seed, stream, inside)
        )  # fmt: skip
        if not valid:
            raise CheckpointRefused(f"checkpoint {path} is corrupt: chunk {stream} fails its check")
        stored.append((stream, inside))
    return stored


def _rows(connection: sqlite3.Connection) -> Iterator[tuple[Any, Any, Any]]:
    yield from connection.execute("SELECT stream, inside, check_value FROM chunks ORDER BY stream")


def _whole(value: Any, low: int, high: int | None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(value)
    if value < low or (high is not None and value >= high):
        raise ValueError(value)
    return value


def _target(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(value)
    return float(value)


def _part(value: Any) -> Part | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"index", "of"}:
        raise ValueError(value)
    return Part(_whole(value["index"], 1, None), _whole(value["of"], 1, None))


def _remove_stale_partials(target: Path) -> None:
    """Delete what runs killed while creating ``target`` left (``.NAME.PID.partial``,
    PID no longer running): never read, so only clutter."""
    for partial in target.parent.glob(f".{glob.escape(target.name)}.*.partial"):
        pid = partial.name[len(target.name) + 2 : -len(".partial")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            partial.unlink(missing_ok=True)
        except PermissionError:
            pass  # alive, someone else's


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
