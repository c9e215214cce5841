"""Files mcpi does not trust: reading them within limits, and writing beside others' files.

Two kinds of file reach mcpi from outside its control. Files it *reads* that someone
else may have written (a checkpoint given to ``--resume``, a part given to ``mcpi
combine``, a hosts file): each is read with a size limit, so ``/dev/zero`` or a 1 GiB
file ends in one line rather than a ``MemoryError``, and its JSON with a depth and a
digit limit, so a document nested 100,000 deep or a 5,000-digit number is refused
before Python's parser recurses or converts it. And files it *writes* into a
directory others may share (``/tmp``): created under an unpredictable name with
``O_CREAT | O_EXCL | O_NOFOLLOW``, so no name another user planted in advance (a
symlink to ``/etc/passwd``, a file they own and can rewrite later) is ever opened,
then renamed or linked into place.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Final

MAX_JSON_DEPTH: Final[int] = 32
"""Nesting of arrays and objects mcpi accepts in a file: what it writes is 3 deep."""

MAX_NUMBER_CHARS: Final[int] = 40
"""Characters of one JSON number: a 20-digit seed fits, ``10**400`` does not (Python
would convert a 4,300-digit integer before any bound could be checked)."""

_CREATE_FLAGS: Final[int] = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_STRINGS: Final[re.Pattern[str]] = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
"""A JSON string, written as an unrolled loop: linear, and fast on a long string."""


class TooLarge(ValueError):
    """A file longer than its limit; ``str()`` says so in a few words."""


# ---------------------------------------------------------------------- reading


_OPEN_FD: Final[re.Pattern[str]] = re.compile(r"/dev/stdin|/(?:dev|proc/self)/fd/[0-9]+")
"""A name for a descriptor this process already holds: what a shell's ``<(...)`` gives,
or ``/dev/stdin``."""


class NotRegular(OSError):
    """A name that is not a regular file to read (a FIFO, a device, a directory);
    ``str()`` says what it is."""


class NotOwn(OSError):
    """A file of instructions that someone else may have written (``owner_refusal``);
    ``str()`` says who may."""


def owner_refusal(status: os.stat_result) -> str | None:
    """Why a file whose content instructs mcpi (a hosts file: which machines run the
    workers, and so give the counts) must not be read, or None: it is another user's
    (root's is fine), or writable by others, or by a group with any member but this
    user (a "user private group" and a umask of 002 make every file group-writable:
    ``numba_cache.group_refusal``). ssh's rule for its own configuration (``Bad owner
    or permissions``, with Debian's allowance for private groups), which the file is like."""
    me = os.geteuid()
    if status.st_uid not in (me, 0):
        return f"is another user's (uid {status.st_uid})"
    mode = f"mode {stat.S_IMODE(status.st_mode):04o}"
    if status.st_mode & stat.S_IWOTH:
        return f"may be written by others ({mode})"
    if status.st_mode & stat.S_IWGRP:
        from mcpi_worker.numba_cache import group_refusal  # grp and pwd: only for such a file

        if (why := group_refusal(status.st_gid, me)) is not None:
            return f"may be written by its group ({mode}), and {why}"
    return None


def read_limited(path: str | os.PathLike[str], limit: int, *, own: bool = False) -> bytes:
    """The whole of ``path`` if it has at most ``limit`` bytes. Raises ``TooLarge``;
    ``NotRegular`` for a name that is not a regular file, unless it names a pipe this
    process already holds open (``/dev/fd/N``, what a shell's ``<(...)`` passes, or
    ``/dev/stdin``); with ``own``, ``NotOwn`` for a file someone else may have written
    (``owner_refusal``); and
    ``OSError`` for a file that cannot be opened or read.

    Opened without blocking, so a named FIFO that no one writes is refused at once
    rather than waited on for ever; at most ``limit + 1`` bytes are ever read."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        status = os.fstat(descriptor)
        mode = status.st_mode
        if stat.S_ISFIFO(mode) and _OPEN_FD.fullmatch(os.fspath(path)):
            os.set_blocking(descriptor, True)  # a pipe from <(...): its writer is running
        elif not stat.S_ISREG(mode):
            raise NotRegular(f"{_kind(mode)}, not a regular file")
        elif own and (why := owner_refusal(status)) is not None:
            raise NotOwn(why)
    except BaseException:
        os.close(descriptor)
        raise
    with open(descriptor, "rb") as file:
        return read_stream_limited(file, limit)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "a special file"


def read_stream_limited(stream: IO[bytes], limit: int) -> bytes:
    """What ``stream`` holds until its end, if at most ``limit`` bytes; ``TooLarge`` otherwise.

    A descriptor under it that is non-blocking (O_NONBLOCK: a pipe whose other user set
    it, as Node.js does to the pipes it is given) is made blocking first: read() then
    stopped at what had come so far, a part of the input taken for all of it, or found
    nothing yet and returned None (a ``TypeError`` traceback from ``mcpi combine -``)."""
    try:
        os.set_blocking(stream.fileno(), True)
    except (AttributeError, OSError, ValueError):  # no descriptor (BytesIO), or no such flags
        pass
    content = stream.read(limit + 1)
    if len(content) > limit:
        raise TooLarge(f"longer than {_size(limit)}")
    return content


def _size(limit: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if limit >= size and limit % size == 0:
            return f"{limit // size} {unit}"
    return f"{limit:,} bytes"


def json_loads_limited(text: str) -> Any:
    """``json.loads`` for a file mcpi did not write itself: ValueError (one line) for
    text that is not JSON, nests deeper than ``MAX_JSON_DEPTH``, holds a number of more
    than ``MAX_NUMBER_CHARS`` characters or one that is not finite (``NaN``, ``1e400``)."""
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested {depth:,} deep, deeper than the {MAX_JSON_DEPTH} mcpi accepts")
    return json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)


def json_depth(text: str) -> int:
    """How deep the arrays and objects of JSON ``text`` nest (brackets inside strings
    not counted), found without recursion, in NumPy: 0 for a scalar."""
    import numpy as np  # loaded by the commands that read a file, not by every run

    codes = np.frombuffer(_STRINGS.sub("", text).encode("utf-8", "surrogatepass"), dtype=np.uint8)
    opening = (codes == ord("[")) | (codes == ord("{"))
    steps = opening.astype(np.int64) - ((codes == ord("]")) | (codes == ord("}")))
    return max(0, int(np.cumsum(steps).max())) if len(steps) else 0


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(text):,} digits, more than mcpi writes")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(text):,} characters, more than mcpi writes")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is beyond a float")
    return value


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number mcpi writes")


# ---------------------------------------------------------------------- writing


def create_exclusive(directory: Path, prefix: str, suffix: str, mode: int = 0o666) -> tuple[int, Path]:
    """A new file in ``directory`` named ``prefix + <random> + suffix``, created by this
    call (``O_EXCL``: never a file or symlink that was there before), open for writing:
    (descriptor, path). ``mode`` is narrowed by the umask as for any new file. Raises
    ``OSError`` (``PermissionError`` for a directory this user cannot write)."""
    while True:
        path = directory / f"{prefix}{secrets.token_hex(8)}{suffix}"
        try:
            return os.open(path, _CREATE_FLAGS, mode), path
        except FileExistsError:
            continue  # 2**-64 a try: someone planted this very name; draw another


class UnsafeDirectory(OSError):
    """A directory anyone may write that lacks the sticky bit; ``str()`` says so."""


def check_directory(directory: Path) -> None:
    """Refuse to write into ``directory`` if anyone may write it and it lacks the sticky
    bit (``/tmp`` has it): there anyone may rename or replace anyone's files, so no
    check on a name, nor an exclusive create, would hold. Raises ``UnsafeDirectory``,
    and ``OSError`` if the directory cannot be looked at."""
    mode = os.stat(directory).st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise UnsafeDirectory(
            f"its directory {directory} may be written by anyone and has no sticky bit, so anyone "
            "could replace the file: use a directory only you can write, or chmod +t it"
        )


@contextmanager
def replacing(target: Path) -> Iterator[IO[bytes]]:
    """A file to write ``target``'s new content into: created exclusively beside it and
    renamed over it when the ``with`` block ends without an error (so an existing
    ``target`` symlink is replaced, never written through, and no half-written file
    ever has its name); removed on an error. Raises ``UnsafeDirectory``
    (``check_directory``) before anything is written, and ``OSError``."""
    check_directory(target.parent)
    descriptor, temporary = create_exclusive(target.parent, f".{target.name}.", ".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
        os.replace(temporary, target)
    except BaseException:
        with suppress(OSError):
            temporary.unlink()
        raise


def claim(path: Path) -> bool:
    """Make sure ``path`` is a regular file of this process's user with one link,
    creating it empty (mode 0600, exclusively) if it does not exist; True if it was
    created. Raises ``ForeignFile`` naming what is wrong with a name someone else
    holds: a symlink, a FIFO or device, another user's file, a hard link."""
    try:
        os.close(os.open(path, _CREATE_FLAGS, 0o600))
        return True
    except FileExistsError:
        pass
    check_own_file(path)
    return False


class ForeignFile(OSError):
    """A name in the way that this user did not make; ``str()`` says what it is."""


def check_own_file(path: Path) -> os.stat_result:
    """``path``'s status if it is a regular file of this process's effective user with a
    single link; ``ForeignFile`` otherwise, and ``OSError`` if it cannot be looked at.
    A symlink itself is looked at, never followed."""
    status = os.lstat(path)
    expected = os.geteuid()
    if stat.S_ISLNK(status.st_mode):
        raise ForeignFile(f"{path} is a symlink")
    if not stat.S_ISREG(status.st_mode):
        raise ForeignFile(f"{path} is not a regular file")
    if status.st_uid != expected:
        raise ForeignFile(f"{path} belongs to another user (uid {status.st_uid})")
    if status.st_nlink != 1:
        raise ForeignFile(f"{path} has {status.st_nlink} hard links")
    return status


def remove_if(path: Path, keep: Callable[[os.stat_result], bool]) -> None:
    """Delete ``path`` unless ``keep`` its status; nothing if it is gone or not removable."""
    with suppress(OSError):
        if not keep(os.lstat(path)):
            path.unlink()
