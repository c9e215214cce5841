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

A new checkpoint is its user's alone (mode 0600, as its journals): SQLite's own mode for
a new file (0644 less the umask) let any user of the machine open it, and one who
could read it could take a read lock on it (``fcntl``, the lock SQLite takes) and keep
its owner's ``--resume`` refused for as long as they liked ("in use by another mcpi
run"), besides reading the run. A file made before this keeps the mode it has.

A new checkpoint is made in memory, written whole under a temporary name of its own
(``.NAME.PID.RANDOM.partial``, created exclusively) and linked into place, so a run
killed while creating it leaves no half-made file under the user's name; the next
``--checkpoint NAME`` deletes such leftovers (its user's only).

Why another user sharing the directory cannot take it over (``/tmp``, a group's
scratch space): no name mcpi writes to can be planted in advance. The temporary name
is unpredictable and opened with ``O_EXCL | O_NOFOLLOW``; the link to NAME fails if
anything holds NAME; ``NAME-wal`` and ``NAME-journal``, which SQLite opens by name
(following symlinks, and replaying a journal it finds into the file), are created
empty by mcpi before SQLite looks, or refused unless they are the user's own regular
files. And a file given to ``--resume`` is refused before any statement could run
code stored in it: its schema must be exactly mcpi's two tables (no trigger, view,
index or other table), and every value is bounded (size, nesting, digits) before it
is parsed.
"""

from __future__ import annotations

import errno
import glob
import json
import math
import os
import re
import shlex
import sqlite3
import stat
import time
import zlib
from array import array
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Self

from mcpi_coordinator import files
from mcpi_coordinator.errors import CheckpointRefused, McpiError  # CheckpointRefused: raised here, defined there
from mcpi_coordinator.run.parts import Part
from mcpi_worker import __version__  # not mcpi_coordinator's: its __init__ names the layers above
from mcpi_worker.constants import KERNEL_VERSIONS
from mcpi_worker.quoting import quoted

FORMAT: Final[int] = 1
"""The checkpoint format this mcpi writes and reads."""

COMMIT_EVERY_S: Final[float] = 0.5

_SQLITE_MAGIC: Final[bytes] = b"SQLite format 3\x00"
"""How every SQLite database file begins (https://sqlite.org/fileformat.html)."""

_SCHEMA: Final[tuple[str, ...]] = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE chunks (stream INTEGER PRIMARY KEY, inside INTEGER NOT NULL, check_value INTEGER NOT NULL)",
)
"""One table of parameters and versions (JSON values: a seed may exceed SQLite's
64-bit signed integers), one row per completed chunk."""


class CheckpointFailed(McpiError):
    """Writing to an open checkpoint failed (a full disk, an I/O error): what was
    committed before is intact, the rows of the failed transaction are not in the file
    and will be computed again on resuming. ``str()`` is one line naming the file."""


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


_VERSION: Final[re.Pattern[str]] = re.compile(r"[0-9][0-9A-Za-z.+!_-]{0,39}")
"""A version mcpi can have been (PEP 440, local part included), and nothing longer."""


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
        self._real = path
        """The file SQLite has open (``path`` with symlinks resolved)."""
        self._buffer: list[tuple[int, int, int]] = []
        self._last_commit = time.monotonic()
        # Every chunk the file holds or will hold once committed, so that one open
        # checkpoint serves several runs in turn; compact (8 bytes a number).
        self._streams = array("q")
        self._insides = array("q")

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(cls, path: str | os.PathLike[str], parameters: RunParameters) -> Self:
        """A new checkpoint at ``path`` for a run of ``parameters``; refused if the file exists.

        Safe in a directory other users can write (``/tmp``): the file is made in memory,
        written to a temporary file of an unpredictable name created exclusively
        (``files.create_exclusive``), and linked to ``path``, which fails if anything
        (a symlink included) holds the name by then. The names SQLite will open beside
        it (``NAME-wal``, ``NAME-journal``) are claimed first, the same way, so SQLite
        never follows a symlink or replays a journal that another user planted there.

        Returns it open and locked. Raises ``CheckpointRefused`` (one line naming the
        file) when ``path`` exists, is a directory, has no directory, is in a directory
        anyone may write that lacks the sticky bit, or cannot be written or opened;
        ``ValueError`` for a kernel with no definition version (``KERNEL_VERSIONS``)."""
        target = Path(path)
        _check_name(target, "create")
        if target.is_dir():
            raise CheckpointRefused(
                f"checkpoint {target} is a directory; name a new file in it, e.g. --checkpoint {target / 'run.ckpt'}"
            )
        if target.exists() or target.is_symlink():
            try:
                owner = target.lstat().st_uid
            except OSError:
                owner = os.geteuid()  # gone meanwhile: the plain refusal below
            if owner != os.geteuid():  # --resume refuses it (``_check_writers``): say so now
                raise CheckpointRefused(
                    f"checkpoint {target} already exists and belongs to another user (uid {owner}): "
                    "choose a new file"
                )
            raise CheckpointRefused(
                f"checkpoint {target} already exists: carry that run on with --resume {target}, "
                "or choose a new file"
            )
        if not target.parent.is_dir():
            raise CheckpointRefused(f"cannot create checkpoint {target}: no directory {target.parent}")
        if parameters.kernel not in KERNEL_VERSIONS:
            raise ValueError(f"no kernel version for {parameters.kernel!r}")
        _check_directory(target)
        _remove_stale_partials(target)
        claimed: list[Path] = []
        try:
            claimed = _claim_journals(Path(os.path.realpath(target)))  # named as SQLite will
            descriptor, partial = files.create_exclusive(
                target.parent, f".{target.name}.{os.getpid()}.", ".partial", mode=0o600
            )  # the user's alone (PRIVATE_MODE)
            try:
                with os.fdopen(descriptor, "wb") as written:
                    written.write(_new_file(parameters))
                    written.flush()
                    os.fsync(written.fileno())  # durable before it takes the user's name
                os.link(partial, target)  # never replaces: a name taken meanwhile fails
            finally:
                partial.unlink(missing_ok=True)
        except FileExistsError:
            _unclaim(claimed)
            raise CheckpointRefused(f"checkpoint {target} was created meanwhile by another run") from None
        except files.ForeignFile as error:
            raise CheckpointRefused(f"cannot create checkpoint {target}: {_foreign(error)}") from None
        except OSError as error:
            _unclaim(claimed)
            raise CheckpointRefused(f"cannot create checkpoint {target}: {_reason(error)}") from None
        except BaseException:
            # A stop (Ctrl-C, SIGTERM, SIGHUP) while the file is made: once it has the
            # user's name, what was claimed beside it is the file's (``--resume`` opens
            # it); before, nothing of this run is left under that name.
            if not target.exists():
                _unclaim(claimed)
            raise
        return cls._open(target, expect=parameters)

    @classmethod
    def resume(cls, path: str | os.PathLike[str]) -> Self:
        """The checkpoint at ``path``, checked whole and locked; its rows in ``stored``.

        Raises ``CheckpointRefused`` (one line naming the file) when there is none, or it
        is not a regular file, not an mcpi checkpoint, corrupt or with a row that fails
        its check, written by a newer mcpi or for another kernel version, another user's
        or writable by anyone, in a directory anyone may write that lacks the sticky
        bit, or in use by another run."""
        target = Path(path)
        _check_name(target, "open")
        if not target.exists():
            raise CheckpointRefused(
                f"no checkpoint at {target}: start the run with --checkpoint {target}"
            )
        if target.is_dir():
            raise CheckpointRefused(f"checkpoint {target} is a directory, not a checkpoint file")
        return cls._open(target, expect=None)

    @classmethod
    def _open(cls, path: Path, *, expect: RunParameters | None) -> Self:
        # SQLite opens the file, and names its journals, by the path with symlinks resolved.
        real = Path(os.path.realpath(path))
        try:
            status = os.stat(real)
            if not stat.S_ISREG(status.st_mode):
                raise CheckpointRefused(f"{path} is not an mcpi checkpoint (not a regular file)")
            _check_writers(path, status)
            _check_directory(real)
            with open(real, "rb") as file:  # nothing is created beside a file that is not SQLite's
                if status.st_size and file.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                    raise CheckpointRefused(f"checkpoint {path} is corrupt or not a checkpoint: file is not a database")
            created = _claim_journals(real)
        except files.ForeignFile as error:
            raise CheckpointRefused(f"checkpoint {path} is refused: {_foreign(error)}") from None
        except OSError as error:
            raise CheckpointRefused(f"cannot open checkpoint {path}: {_reason(error)}") from None
        try:
            # timeout=0: a file another run holds is refused at once, not waited for.
            connection = sqlite3.connect(real, timeout=0, isolation_level=None)
        except sqlite3.Error as error:
            _unclaim(created)
            raise CheckpointRefused(f"cannot open checkpoint {path}: {_reason(error)}") from None
        try:
            # A schema's views and defaults may not call functions with side effects.
            connection.execute("PRAGMA trusted_schema=OFF")
            connection.execute("PRAGMA locking_mode=EXCLUSIVE")
            connection.execute("BEGIN EXCLUSIVE")  # the lock, held until close
            # Before any other statement: a trigger fires at our first write, a view
            # runs its query when read, so a file holding one is refused unread.
            _check_schema(connection, path)
            parameters = _read_parameters(connection, path)
            if expect is not None and parameters != expect:
                raise CheckpointRefused(f"checkpoint {path} changed while it was being created")
            _check_size(connection, path, parameters, status)
            stored = _read_chunks(connection, path, parameters)
            connection.execute("COMMIT")
            # Checked first, changed after: only now is the file known to be ours.
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise CheckpointRefused(f"checkpoint {path}: cannot use write-ahead logging ({mode})")
            connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as error:
            connection.close()
            _unclaim(created)
            if "locked" in str(error):
                raise CheckpointRefused(_in_use(path, real)) from None
            raise CheckpointRefused(f"checkpoint {path} cannot be read: {_reason(error)}") from None
        except sqlite3.DatabaseError as error:
            connection.close()
            _unclaim(created)
            raise CheckpointRefused(
                f"checkpoint {path} is corrupt or not a checkpoint: {_reason(error)}"
            ) from None
        except BaseException:
            connection.close()
            _unclaim(created)
            raise
        checkpoint = cls(path, connection, parameters)
        checkpoint._real = real
        checkpoint._streams, checkpoint._insides = stored
        checkpoint.saved = len(stored[0])
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
        """Keep a completed chunk; committed with others at most every ``commit_every_s``.
        Raises ``CheckpointFailed`` when that commit fails, ``RuntimeError`` once closed."""
        self._buffer.append((stream, inside, check_value(self.parameters.seed, stream, inside)))
        self._streams.append(stream)
        self._insides.append(inside)
        if time.monotonic() - self._last_commit >= self.commit_every_s:
            self.commit()

    def forget(self, streams: Iterable[int]) -> None:
        """Delete chunks (their worker was caught lying), committed at once. Raises
        ``CheckpointFailed`` when the write fails, ``RuntimeError`` once closed."""
        doomed = set(streams)
        self._buffer = [row for row in self._buffer if row[0] not in doomed]
        kept = [(s, i) for s, i in self.stored() if s not in doomed]
        self._streams = array("q", [s for s, _ in kept])
        self._insides = array("q", [i for _, i in kept])
        connection = self._require_open()
        with self._transaction(connection):
            before = connection.total_changes
            connection.executemany("DELETE FROM chunks WHERE stream = ?", [(s,) for s in sorted(doomed)])
            deleted = connection.total_changes - before
        self.saved -= deleted

    def commit(self) -> None:
        """Write the buffered rows in one transaction. Raises ``CheckpointFailed`` (the
        rows are dropped: the file keeps what it had, and a resumed run computes them again),
        and ``RuntimeError`` once it is closed."""
        connection = self._require_open()
        self._last_commit = time.monotonic()
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        with self._transaction(connection):
            connection.executemany("INSERT INTO chunks (stream, inside, check_value) VALUES (?, ?, ?)", rows)
        self.saved += len(rows)
        self.commits += 1

    @contextmanager
    def _transaction(self, connection: sqlite3.Connection) -> Iterator[None]:
        try:
            connection.execute("BEGIN")
            yield
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            with suppress(sqlite3.Error):
                connection.execute("ROLLBACK")  # after a failed COMMIT the transaction is still open
            raise CheckpointFailed(f"cannot write checkpoint {self.path}: {_reason(error)}") from None

    def close(self) -> None:
        """Commit what is buffered and release the file (and its lock). Idempotent. Raises
        ``CheckpointFailed`` if that last commit fails (the file is released all the same)."""
        if self._connection is None:
            return
        try:
            self.commit()
        finally:
            self._connection.close()
            self._connection = None
            # The journal claimed at opening (empty: WAL mode never writes it); SQLite
            # deletes its own -wal as it closes.
            files.remove_if(_journal(self._real, "-journal"), keep=_not_an_empty_file_of_ours)

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


_MAX_META: Final[int] = 32
"""Rows of ``meta`` a checkpoint may have (it has 9), and below: characters of one key
and one value (a value is a number, a name or a part, at most ~60 characters)."""
_MAX_META_KEY: Final[int] = 64
_MAX_META_VALUE: Final[int] = 256

MAX_POINTS: Final[int] = 2**53
"""The most points a checkpoint's run may have: the most ``mcpi estimate --points``
takes (``cli.estimate_parser.MAX_TOTAL_POINTS``)."""


def _schema_of(statements: Iterable[str]) -> frozenset[tuple[str, str, str, str | None]]:
    connection = sqlite3.connect(":memory:")
    try:
        for statement in statements:
            connection.execute(statement)
        return frozenset(connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    finally:
        connection.close()


_OUR_SCHEMA: Final = _schema_of(_SCHEMA)
"""What ``sqlite_master`` of an mcpi checkpoint holds: its two tables and meta's key index."""


_KINDS: Final[dict[str, str]] = {"index": "indexes", "table": "tables", "trigger": "triggers", "view": "views"}


def _check_schema(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse a file whose schema is anything but mcpi's: a trigger would run at every
    commit, a view run its query when read, another table or a different definition of
    ours is not something mcpi wrote. Reads only ``sqlite_master``, and only so much
    of it (a hostile file may hold any number of objects, with any text)."""
    rows = connection.execute(
        "SELECT type, name, tbl_name, CASE WHEN length(sql) > 1000 THEN '' ELSE sql END "
        f"FROM sqlite_master LIMIT {len(_OUR_SCHEMA) + 8}"
    ).fetchall()
    names = {(row[0], row[1]) for row in rows}
    if not {("table", "meta"), ("table", "chunks")} <= names:
        raise CheckpointRefused(f"{path} is not an mcpi checkpoint (it has no run parameters)")
    extra = sorted({row[0] for row in rows if row not in _OUR_SCHEMA})
    if extra or len(rows) != len(_OUR_SCHEMA):
        kinds = ", ".join(_KINDS[kind] for kind in extra if kind in _KINDS)
        raise CheckpointRefused(
            f"checkpoint {path} is refused: its schema holds {kinds or 'definitions'} mcpi never "
            "writes (a checkpoint has only mcpi's two tables)"
        )


def _read_meta(connection: sqlite3.Connection, path: Path) -> dict[str, Any]:
    """The run's parameters and versions as written, each value bounded in size, depth
    and digits before it is parsed."""
    corrupt = CheckpointRefused(f"checkpoint {path} is corrupt: its parameters are not readable")
    rows = connection.execute(
        "SELECT key, value FROM meta WHERE typeof(key) = 'text' AND typeof(value) = 'text' "
        f"AND length(key) <= {_MAX_META_KEY} AND length(value) <= {_MAX_META_VALUE} "
        f"LIMIT {_MAX_META + 1}"
    ).fetchall()
    (count,) = connection.execute(f"SELECT count(*) FROM (SELECT 1 FROM meta LIMIT {_MAX_META + 1})").fetchone()
    if count != len(rows) or count > _MAX_META:
        raise corrupt
    try:
        return {key: files.json_loads_limited(value) for key, value in rows}
    except ValueError:
        raise corrupt from None


def _read_parameters(connection: sqlite3.Connection, path: Path) -> RunParameters:
    if connection.execute("PRAGMA quick_check").fetchone() != ("ok",):
        raise CheckpointRefused(f"checkpoint {path} is corrupt (SQLite's quick_check failed)")
    meta = _read_meta(connection, path)
    written_by = meta.get("mcpi_version")
    fmt = meta.get("format")
    if not isinstance(fmt, int) or not isinstance(written_by, str) or not _VERSION.fullmatch(written_by):
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
            points=_whole(meta["points"], 1, MAX_POINTS + 1),
            chunk_size=_whole(meta["chunk_size"], 1, MAX_POINTS + 1),
            kernel=str(meta["kernel"]),
            target_error=_target(meta["target_error"]),
            part=_part(meta.get("part")),  # absent in files of whole runs written before parts
        )
        kernel_version = _whole(meta["kernel_version"], 0, 2**31)
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


_BYTES_PER_CHUNK: Final[int] = 128
"""The most file a chunk's row may take: a row holds three integers (at most ~40 bytes
with its cell's header and pointer), and a B-tree filled in any order keeps its pages at
least about a third full; mcpi's own files take about 20 bytes a chunk."""
_BYTES_BASE: Final[int] = 2**20
"""Besides the rows: the header, the schema, the parameters and free pages."""


def _check_size(
    connection: sqlite3.Connection, path: Path, parameters: RunParameters, status: os.stat_result
) -> None:
    """Refuse, before reading a row, a file larger than any mcpi writes for its run: the
    rows are read whole, so a crafted file of a small run holding gigabytes (of pages,
    or of a size its header claims) would otherwise be read for minutes."""
    chunks = len(parameters.streams)
    limit = _BYTES_BASE + _BYTES_PER_CHUNK * chunks
    (pages,) = connection.execute("PRAGMA page_count").fetchone()
    (page_size,) = connection.execute("PRAGMA page_size").fetchone()
    size = max(status.st_size, pages * page_size)
    if size > limit:
        raise CheckpointRefused(
            f"checkpoint {path} is corrupt or not mcpi's: {size:,} bytes, more than mcpi writes for "
            f"a run of {chunks:,} chunks (at most {limit:,})"
        )


def _read_chunks(
    connection: sqlite3.Connection, path: Path, parameters: RunParameters
) -> tuple[array[int], array[int]]:
    """(streams, insides) of every row, in stream order, into arrays of 8 bytes a value."""
    stored = array("q"), array("q")
    streams = parameters.streams
    for stream, inside, check in _rows(connection):
        valid = (
            isinstance(stream, int) and isinstance(inside, int) and stream in streams
            and 0 <= inside <= parameters.chunk_points(stream)
            and check == check_value(parameters.seed, stream, inside)
        )  # fmt: skip
        if not valid:
            raise CheckpointRefused(f"checkpoint {path} is corrupt: chunk {stream} fails its check")
        stored[0].append(stream)
        stored[1].append(inside)
    return stored


def _rows(connection: sqlite3.Connection) -> Iterator[tuple[Any, Any, Any]]:
    # A value of another type (a blob may be of any size) is read as NULL, which fails the check.
    yield from connection.execute(
        "SELECT stream, CASE typeof(inside) WHEN 'integer' THEN inside END, "
        "CASE typeof(check_value) WHEN 'integer' THEN check_value END FROM chunks ORDER BY stream"
    )


def _whole(value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(value)
    if value < low or value >= high:
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
    return Part(_whole(value["index"], 1, MAX_POINTS + 1), _whole(value["of"], 1, MAX_POINTS + 1))


def _remove_stale_partials(target: Path) -> None:
    """Delete what runs killed while creating ``target`` left (``.NAME.PID.RANDOM.partial``,
    or ``.NAME.PID.partial`` of earlier versions; PID no longer running, the file this
    user's): never read, so only clutter. Another user's file of that name, or a
    symlink, is left alone, as is anything not removable."""
    for partial in target.parent.glob(f".{glob.escape(target.name)}.*.partial"):
        pid = partial.name[len(target.name) + 2 : -len(".partial")].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            files.remove_if(partial, keep=_not_ours)
        except PermissionError:
            pass  # alive, someone else's


def _check_writers(path: Path, status: os.stat_result) -> None:
    """Refuse a checkpoint that someone else may have rewritten: another user's file, or
    one anyone may write. Its check values are CRCs, not signatures, so whoever can
    write it can make ``--resume`` print any count."""
    if status.st_uid != os.geteuid():
        raise CheckpointRefused(
            f"checkpoint {path} belongs to another user (uid {status.st_uid}), who could have changed "
            f"its counts: resume a copy of it that is yours (cp {shlex.quote(str(path))} mine.db)"
        )
    if status.st_mode & stat.S_IWOTH:
        raise CheckpointRefused(
            f"checkpoint {path} may be written by anyone, who could have changed its counts: "
            f"resume a copy only you can write (cp {shlex.quote(str(path))} mine.db)"
        )


def _check_directory(path: Path) -> None:
    """Refuse a checkpoint in a directory anyone may write that lacks the sticky bit
    (``/tmp`` has it): there anyone may rename or replace anyone's files, the checkpoint
    and its journals included, and nothing mcpi checks first would hold."""
    try:
        files.check_directory(path.parent)
    except files.UnsafeDirectory as error:
        raise CheckpointRefused(f"checkpoint {path}: {error}") from None


def _not_ours(status: os.stat_result) -> bool:
    return not stat.S_ISREG(status.st_mode) or status.st_uid != os.geteuid()


def _not_an_empty_file_of_ours(status: os.stat_result) -> bool:
    return status.st_size > 0 or _not_ours(status)


SQLITE_LOCK_BYTES: Final[tuple[int, int]] = (0x40000000, 512)
"""Where SQLite takes its locks in a database file (os_unix.c: PENDING_BYTE, then the
RESERVED byte and the SHARED range): what a holder of the file's lock holds."""


def _in_use(path: Path, real: Path) -> str:
    """Why a checkpoint's lock could not be taken: another run of this user's, or a
    process of another user's that can read the file (one made before checkpoints were
    their user's alone), named with its pid (``fcntl`` F_GETLK, Linux's ``struct flock``)."""
    import fcntl
    import struct

    plain = f"checkpoint {path} is in use by another mcpi run (one run per file)"
    try:
        fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        try:
            asked = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, *SQLITE_LOCK_BYTES, 0)
            answer = fcntl.fcntl(fd, fcntl.F_GETLK, asked)
        finally:
            os.close(fd)
        kind, _whence, _start, _length, pid = struct.unpack("hhqqi4x", answer)
        if kind == fcntl.F_UNLCK or pid <= 0:
            return plain
        uid = os.stat(f"/proc/{pid}").st_uid
    except (OSError, struct.error, ValueError):
        return plain
    if uid == os.geteuid():
        return f"checkpoint {path} is in use by another mcpi run (process {pid}; one run per file)"
    import pwd

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid {uid}"
    return (
        f"checkpoint {path} is locked by process {pid} of another user ({user}), which can read it: "
        f"once it lets go, 'chmod 600 {path}' keeps others out"
    )


def _check_name(target: Path, doing: str) -> None:
    """Refuse a name the system refuses (a part of it over 255 bytes, the whole over 4,096:
    ENAMETOOLONG), which ``Path.is_dir`` and ``Path.exists`` raise as ``OSError`` rather
    than answer: a traceback, before. Raises ``CheckpointRefused`` quoting the name
    shortened (``quoting``)."""
    try:
        target.lstat()
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise CheckpointRefused(f"cannot {doing} checkpoint {quoted(target)}: {error.strerror}") from None


def _journal(database: Path, suffix: str) -> Path:
    return database.with_name(database.name + suffix)


def _journals(database: Path) -> list[Path]:
    """The files SQLite opens beside ``database`` (its real path) by name: the WAL, and
    the rollback journal it replays into the file if one is there when it opens (``-shm``
    is never used: the file is opened in exclusive locking mode)."""
    return [_journal(database, "-wal"), _journal(database, "-journal")]


def _claim_journals(database: Path) -> list[Path]:
    """Make sure each of ``_journals`` is this user's own regular file, creating the
    missing ones empty and exclusively (an empty WAL or journal holds nothing for SQLite
    to replay), so that no one else can plant one before SQLite opens it: the directory
    may be shared, and SQLite follows symlinks and replays a journal it finds. Returns
    those created; raises ``files.ForeignFile`` (the ones created are removed again)
    or ``OSError``."""
    created: list[Path] = []
    try:
        for journal in _journals(database):
            if files.claim(journal):
                created.append(journal)
    except BaseException:
        _unclaim(created)
        raise
    return created


def _unclaim(created: Iterable[Path]) -> None:
    for journal in created:
        journal.unlink(missing_ok=True)


def _foreign(error: files.ForeignFile) -> str:
    return f"{error}, which SQLite would open as its journal: remove it if it is yours"


def _new_file(parameters: RunParameters) -> bytes:
    """A new checkpoint's bytes: made in memory, so that SQLite never opens a file
    in the (maybe shared) directory before it has its name."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    try:
        connection.execute("BEGIN")
        for statement in _SCHEMA:
            connection.execute(statement)
        connection.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [(key, json.dumps(value)) for key, value in _meta(parameters).items()],
        )
        connection.execute("COMMIT")
        image = bytearray(connection.serialize())
    finally:
        connection.close()
    # The file format's read and write versions (bytes 18 and 19): 2 is WAL mode, as
    # "PRAGMA journal_mode=WAL" records it in a file (https://sqlite.org/fileformat.html).
    image[18:20] = b"\x02\x02"
    return bytes(image)


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
