"""numba's cache directory is used only when no one else can write it (issue 23,
finding 4): numba unpickles the index it finds there. A real ``mcpi-worker`` is given a
cache directory holding a planted index whose unpickling writes a marker file; in a
world-writable directory, or one owned by another user (``nobody``, via chown: needs
root, which CI is), or one writable by a group with other members, it must refuse the
directory, say so once, compile in memory, and count as always. A directory of the
user's private group (no other member in the real group database) is used."""

from __future__ import annotations

import grp
import importlib.util
import os
import pickle
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_kernel_worker import assert_golden_answers, base_environment, events, run_worker

from mcpi_worker.numba_cache import directory_refusal, refusal

pytestmark = pytest.mark.slow

NOBODY = 65534
SOMEONE_ELSE = 4242
"""A uid in no group database: no group is this user's alone."""


def private_group(uid: int) -> int | None:
    """The primary group of ``uid`` if the real group database names no other member
    of it (a user private group), else None."""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return None
    group = grp.getgrgid(user.pw_gid)
    primary_of = {entry.pw_uid for entry in pwd.getpwall() if entry.pw_gid == group.gr_gid}
    listed = {pwd.getpwnam(name).pw_uid for name in group.gr_mem}
    return group.gr_gid if primary_of | listed <= {uid} else None


def shared_group(uid: int) -> grp.struct_group | None:
    """A group in the real database with members other than ``uid``, if there is one."""
    for group in grp.getgrall():
        members = {entry.pw_uid for entry in pwd.getpwall() if entry.pw_gid == group.gr_gid}
        if members - {uid}:
            return group
    return None


class _Planted:
    """Unpickling it creates ``marker``: what an attacker's index would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def populated_cache(tmp_path: Path) -> Path:
    """A cache directory a real fused worker has filled (mode 0700: accepted)."""
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    cache.chmod(0o700)
    messages, logs = run_worker(base_environment(MCPI_NUMPY_IMPL="fused", NUMBA_CACHE_DIR=str(cache)))
    assert_golden_answers(messages)
    (loaded,) = events(logs, "numpy_kernel_implementation")
    assert loaded["implementation"] == "numba-fused" and loaded["cache_path"].startswith(str(cache))
    assert not events(logs, "fused_kernel_cache_refused")
    return cache


def plant(cache: Path, marker: Path) -> None:
    """Replace every index numba wrote with one that runs code when it is loaded."""
    indexes = list(cache.rglob("*.nbi"))
    assert indexes
    for index in indexes:
        index.write_bytes(pickle.dumps(_Planted(marker)))


def run_on(cache: Path) -> list[dict[str, Any]]:
    messages, logs = run_worker(base_environment(MCPI_NUMPY_IMPL="fused", NUMBA_CACHE_DIR=str(cache)))
    assert_golden_answers(messages)  # the counts never depend on the cache
    return logs


def assert_refused(logs: list[dict[str, Any]], why: str) -> None:
    (refused,) = events(logs, "fused_kernel_cache_refused")  # said once
    assert why in refused["reason"] and "NUMBA_CACHE_DIR" in refused["consequence"]
    (loaded,) = events(logs, "numpy_kernel_implementation")
    assert loaded["implementation"] == "numba-fused"
    assert loaded["cache_path"] is None and loaded["compiled"] is True


def test_a_world_writable_cache_directory_is_refused(tmp_path: Path) -> None:
    cache = populated_cache(tmp_path)
    marker = tmp_path / "planted-code-ran"
    plant(cache, marker)
    for directory in [cache, *(p for p in cache.rglob("*") if p.is_dir())]:
        directory.chmod(0o777)
    logs = run_on(cache)
    assert not marker.exists(), "numba unpickled the planted index"
    assert_refused(logs, "is writable by others (mode 0777)")


@pytest.mark.skipif(private_group(os.geteuid()) is None, reason="this user's primary group has other members")
def test_a_group_writable_cache_directory_of_the_users_private_group_is_used(tmp_path: Path) -> None:
    """A user private group (Debian's default): a umask of 002 makes the cache directory
    group-writable, and the group has no member but this user. It was refused, and every
    worker compiled in memory; now a real worker loads from it."""
    cache = populated_cache(tmp_path)
    for directory in [cache, *(p for p in cache.rglob("*") if p.is_dir())]:
        os.chown(directory, -1, private_group(os.geteuid()))
        directory.chmod(0o2775)
    logs = run_on(cache)
    assert not events(logs, "fused_kernel_cache_refused")
    (loaded,) = events(logs, "numpy_kernel_implementation")
    assert loaded["cache_path"].startswith(str(cache)) and loaded["compiled"] is False


@pytest.mark.skipif(os.geteuid() != 0, reason="chgrp to a group of others needs root (CI runs as root)")
def test_a_group_writable_cache_directory_of_a_shared_group_is_refused_and_says_who(tmp_path: Path) -> None:
    group = shared_group(os.geteuid())
    if group is None:
        pytest.skip("no group in the database has members other than this user")
    cache = populated_cache(tmp_path)
    marker = tmp_path / "planted-code-ran"
    plant(cache, marker)
    for directory in [cache, *(p for p in cache.rglob("*") if p.is_dir())]:
        os.chown(directory, -1, group.gr_gid)
        directory.chmod(0o775)
    logs = run_on(cache)
    assert not marker.exists(), "numba unpickled the planted index"
    assert_refused(logs, f"is writable by its group (mode 0775), and group {group.gr_name} has other members (")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")
def test_group_rules_seen_as_another_real_user(tmp_path: Path) -> None:
    """The rule for another user of the real databases: their private group's
    directory is theirs alone; a group they share, or one that is not theirs, is not."""
    others = [entry for entry in pwd.getpwall() if entry.pw_uid != 0 and private_group(entry.pw_uid) is not None]
    if not others:
        pytest.skip("no other user with a private group in the database")
    user = others[0]
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chown(cache, user.pw_uid, user.pw_gid)
    cache.chmod(0o770)
    assert directory_refusal(cache, uid=user.pw_uid) is None
    os.chown(cache, user.pw_uid, 0)  # root's private group
    assert "and group root has other members (root)" in str(directory_refusal(cache, uid=user.pw_uid))
    primaries = {entry.pw_gid for entry in pwd.getpwall()}
    empty = [group for group in grp.getgrall() if not group.gr_mem and group.gr_gid not in primaries]
    if empty:  # a group nobody is in, as far as the database says: still not theirs
        os.chown(cache, user.pw_uid, empty[0].gr_gid)
        assert f"and group {empty[0].gr_name} is not this user's" in str(directory_refusal(cache, uid=user.pw_uid))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root (CI runs as root)")
def test_a_cache_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    cache = populated_cache(tmp_path)
    marker = tmp_path / "planted-code-ran"
    plant(cache, marker)
    for path in [cache, *cache.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)
    logs = run_on(cache)
    assert not marker.exists(), "numba unpickled the planted index"
    assert_refused(logs, f"is owned by uid {NOBODY}")


def test_a_file_another_user_left_in_the_cache_directory_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o700)
    (cache / "x.nbi").write_bytes(b"")
    me = os.geteuid()
    assert directory_refusal(cache, uid=me) is None
    if me == 0:
        os.chown(cache / "x.nbi", NOBODY, NOBODY)
        assert f"x.nbi is owned by uid {NOBODY}" in str(directory_refusal(cache, uid=me))
    # As seen by another user, every one of these is someone else's.
    assert "not by this user (uid 4242)" in str(directory_refusal(cache, uid=4242))


def test_rules_for_the_directories_above(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: world-writable, sticky
    mine = shared / "mine"
    mine.mkdir()
    mine.chmod(0o700)
    assert directory_refusal(mine) is None  # nobody can rename or replace it
    # ...but not as NUMBA_CACHE_DIR itself: the directory named for the cache is the user's alone.
    assert "writable by others" in str(directory_refusal(mine, also_strict=shared))
    shared.chmod(0o777)  # not sticky: anyone can swap "mine" for their own
    assert f"{shared} is writable by others" in str(directory_refusal(mine))
    shared.chmod(0o775)
    why = f"is writable by its group (mode 0775), and this user (uid {SOMEONE_ELSE}) is not in the user database"
    assert f"{shared} {why}" in str(directory_refusal(mine, uid=SOMEONE_ELSE))
    shared.chmod(0o755)
    # A symbolic link is judged by where it leads, and by where it is.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o777)
    link = shared / "link"
    link.symlink_to(elsewhere)
    assert "writable by others" in str(directory_refusal(link))


def test_numbas_default_cache_location_is_checked_too(tmp_path: Path) -> None:
    """With no NUMBA_CACHE_DIR, numba caches beside the source file (``__pycache__``):
    a module in a directory anyone can write gets its cache refused."""
    pytest.importorskip("numba")
    if os.environ.get("NUMBA_CACHE_DIR"):
        pytest.skip("NUMBA_CACHE_DIR is set: numba's default location is not used")
    source_dir = tmp_path / "open"
    source_dir.mkdir()
    source_dir.chmod(0o777)
    (source_dir / "planted_module.py").write_text("def f(x):\n    return x + 1\n")
    spec = importlib.util.spec_from_file_location("planted_module", source_dir / "planted_module.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert f"{source_dir} is writable by others" in str(refusal(module.f))
    source_dir.chmod(0o755)
    assert refusal(module.f) is None


def test_the_refusal_is_one_warning_however_many_workers(tmp_path: Path) -> None:
    """Every local worker refuses the same directory for the same reason: ``mcpi
    estimate`` shows that once, not once per worker."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    done = subprocess.run(
        [sys.executable, "-m", "mcpi_coordinator", "estimate", "--workers", "2", "--points", "2e6",
         "--chunk-size", "1e6", "--seed", "1", "--startup-timeout", "600"],  # each compiles: seconds
        env=base_environment(MCPI_NUMPY_IMPL="fused", NUMBA_CACHE_DIR=str(shared)),
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    refusals = [line for line in done.stderr.splitlines() if "fused_kernel_cache_refused" in line]
    assert len(refusals) == 1, done.stderr
    assert f"{shared} is writable by others (mode 0777)" in refusals[0]
