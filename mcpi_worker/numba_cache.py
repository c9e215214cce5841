"""Whether numba's cache directory is safe to load machine code from.

numba reads a cached function's index with ``pickle`` (the ``.nbi`` file) and then runs
the machine code beside it (``.nbc``): anyone who can write into the cache directory can
make every worker that loads from it run code of theirs. ``NUMBA_CACHE_DIR`` set to a
shared directory (``/tmp/numba``, a group's project space), or a ``__pycache__`` in a
directory other users can write, hands them that. So before a worker lets numba load
anything, ``refusal`` checks the directory numba chose: it, and every directory above
it, must be owned by this user or root, and none may be writable by the group or by
others, except a directory above with the sticky bit (``/tmp``), where nobody can
rename or remove what another user owns (``NUMBA_CACHE_DIR`` itself gets no such
exception: a directory the user named for the cache must be the user's alone); every
entry already in the cache directory must be this user's or root's. A directory that
fails is not used at all: the worker compiles in memory and says why once in its log.

Group-writable is allowed only where the group is this user's alone: a "user private
group" (Debian's and Fedora's default, so a umask of 002 makes every new directory
group-writable), where the group database names no other member, neither in the
group's member list nor as anyone's primary group. Any other group is refused, and
the reason names its other members. A member the database cannot list (a network
directory that does not enumerate) is not seen.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["cache_directory", "directory_refusal", "group_refusal", "refusal"]


def refusal(function: Callable[..., Any], *, uid: int | None = None) -> str | None:
    """Why numba's cache directory for ``function`` must not be used, or None if it
    is safe (or numba has no cache directory for it: nothing would be loaded).

    Works out the directory as numba will (it creates it if missing, as numba does)
    without compiling or loading anything. The functions of the kernel modules share
    one cache directory (numba chooses it by the source file's directory), so one
    check covers them all.
    """
    from numba.core import config

    directory = cache_directory(function)
    if directory is None:
        return None
    named = str(getattr(config, "CACHE_DIR", "") or "")  # NUMBA_CACHE_DIR, read at numba's import
    return directory_refusal(directory, uid=uid, also_strict=Path(named) if named else None)


def cache_directory(function: Callable[..., Any]) -> Path | None:
    """The directory numba would cache ``function`` in; None if it has none."""
    import numba  # only where numba is wanted: the fused kernel's loader

    try:
        lazy = numba.njit(cache=True)(function)  # no signature: nothing compiled or loaded yet
    except RuntimeError:  # numba's "no locator available": nowhere to cache
        return None
    path = lazy.stats.cache_path
    return None if path is None else Path(path)


def directory_refusal(
    directory: Path, *, uid: int | None = None, also_strict: Path | None = None
) -> str | None:
    """Why ``directory`` is unsafe as a numba cache for user ``uid`` (default: the
    effective user), or None. ``also_strict`` is a directory above it held to the cache
    directory's own rule (``NUMBA_CACHE_DIR``). See the module for the rules."""
    me = os.geteuid() if uid is None else uid
    strict = set() if also_strict is None else {Path(os.path.abspath(also_strict)), also_strict.resolve()}
    for place, is_leaf in _directories(directory):
        is_cache = is_leaf or place in strict
        try:
            info = place.stat()
        except OSError as error:
            return f"{place} cannot be examined ({error.strerror})"
        if info.st_uid not in (me, 0):
            return f"{place} is owned by uid {info.st_uid}, not by this user (uid {me}) or root"
        if is_cache or not info.st_mode & stat.S_ISVTX:
            mode = f"mode {stat.S_IMODE(info.st_mode):04o}"
            if info.st_mode & stat.S_IWOTH:
                return f"{place} is writable by others ({mode})"
            if info.st_mode & stat.S_IWGRP:
                why = group_refusal(info.st_gid, me)
                if why is not None:
                    return f"{place} is writable by its group ({mode}), and {why}"
    try:
        entries = list(os.scandir(directory))
    except OSError as error:
        return f"{directory} cannot be listed ({error.strerror})"
    for entry in entries:
        try:
            owner = entry.stat(follow_symlinks=False).st_uid
        except OSError:
            continue  # removed meanwhile
        if owner not in (me, 0):
            return f"{entry.path} is owned by uid {owner}, not by this user (uid {me}) or root"
    return None


def group_refusal(gid: int, uid: int) -> str | None:
    """Why group ``gid`` is not user ``uid``'s alone, or None if it is: the user is in
    it (as their primary group or listed), and no other user is."""
    import grp
    import pwd

    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return f"gid {gid} is not in the group database, so its members are unknown"
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return f"this user (uid {uid}) is not in the user database"
    members: set[str] = set(group.gr_mem)
    members.update(entry.pw_name for entry in pwd.getpwall() if entry.pw_gid == gid)
    others = sorted(name for name in members if name != user.pw_name and _uid_of(name) != uid)
    if others:
        return f"group {group.gr_name} has other members ({', '.join(others)})"
    if user.pw_name not in members:
        return f"group {group.gr_name} is not this user's ({user.pw_name})"
    return None


def _uid_of(name: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _directories(directory: Path) -> Iterator[tuple[Path, bool]]:
    """The cache directory (True), then each directory above it (False), along the
    path as written and along the path with its symbolic links resolved."""
    for path in dict.fromkeys((Path(os.path.abspath(directory)), directory.resolve())):
        yield path, True
        yield from ((parent, False) for parent in path.parents)
