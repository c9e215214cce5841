"""A second real user of this machine, for tests of what one user can do to another's
files: its processes make their files with its own uid, umask and groups, as another
person sharing the machine would (``chown`` to a uid only imitates that).

``second_user()`` returns the user ``mcpi-second``, created (a system user, no home
directory, no login shell) the first time a test needs it: that takes root, which CI
runs as; elsewhere the test is skipped with the reason. ``as_second_user`` runs a
command of the base system (``/bin/sh``, ``mkdir``, ``ln``: every user can run them,
where the interpreter running the tests may sit in root's home) as that user;
``shared_directory`` is a directory like ``/tmp`` where both can make files (pytest's
``tmp_path`` is under a directory of this user's alone).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

NAME = "mcpi-second"


def second_user() -> pwd.struct_passwd:
    """The second user, made if missing. Skips the test where it cannot be made."""
    try:
        return pwd.getpwnam(NAME)
    except KeyError:
        pass
    if os.geteuid() != 0:
        pytest.skip(f"a second real user ({NAME}) is made only as root (CI runs as root)")
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    made = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode not in (0, 9):  # 9: made meanwhile by another test process
        pytest.fail(f"useradd {NAME} failed ({made.returncode}): {made.stderr.strip()}")
    return pwd.getpwnam(NAME)


def as_second_user(argv: Sequence[str]) -> None:
    """Run ``argv`` as the second user (umask 022, its own group only); it must succeed."""
    user = second_user()
    done = subprocess.run(
        argv, user=user.pw_uid, group=user.pw_gid, extra_groups=[], umask=0o022,
        capture_output=True, text=True, check=False, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, f"{list(argv)} as {NAME}: {done.stderr}"


@contextmanager
def shared_directory() -> Iterator[Path]:
    """A new directory of mode 1777 (world-writable, sticky: like ``/tmp``) under the
    system's temporary directory, removed afterwards."""
    top = Path(tempfile.mkdtemp(prefix="mcpi-shared-"))
    try:
        top.chmod(0o1777)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)
