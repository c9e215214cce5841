"""The directory of numba's markers and our object cache (``numba_marker.marker_directory``)
is one no other user can write, and its lock is never opened through a symbolic link.

``XDG_CACHE_HOME`` or ``HOME`` in ``/tmp`` (a service account's, a container's) made the
markers' directory ``/tmp/.cache/mcpi``, which whoever comes first creates: any
directory this user could write was used, so another user who made it mode 777 could
plant markers there, or the warming process's lock as a symbolic link to a file of this
user's, which ``open(lock, "w")`` emptied.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from second_user import as_second_user, second_user, shared_directory

from mcpi_worker.numba_marker import first_own_directory, open_own_file


def test_the_first_directory_no_other_user_can_write_is_chosen(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    own = tmp_path / "home" / ".cache" / "mcpi"  # missing: made
    assert first_own_directory([shared, own]) == own and own.is_dir()
    assert first_own_directory([shared]) is None
    shared.chmod(0o755)
    assert first_own_directory([shared, own]) == shared


def test_a_lock_is_opened_without_following_a_link_or_emptying_it(tmp_path: Path) -> None:
    victim = tmp_path / "notes.txt"
    victim.write_text("mine\n")
    planted = tmp_path / "mcpi-fused-0123456789abcdef.lock"
    planted.symlink_to(victim)
    with pytest.raises(OSError):
        os.close(open_own_file(planted))
    assert victim.read_text() == "mine\n"
    lock = tmp_path / "mcpi-fused-fedcba9876543210.lock"
    lock.write_text("held\n")
    os.close(open_own_file(lock))  # an existing lock of ours: opened as it is
    assert lock.read_text() == "held\n"
    os.close(open_own_file(tmp_path / "new.lock"))
    assert stat.S_IMODE((tmp_path / "new.lock").stat().st_mode) & 0o022 == 0


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    with shared_directory() as directory:
        yield directory


def test_a_second_user_cannot_steer_the_markers_through_a_shared_cache_home(shared_tmp: Path, tmp_path: Path) -> None:
    """A real second user gets to ``$XDG_CACHE_HOME/mcpi`` first, mode 777, with a lock
    linked to one of this user's files: that directory is passed over, and the lock
    could not be opened through the link anyway."""
    other = second_user()
    victim = tmp_path / "notes.txt"
    victim.write_text("mine\n")
    planted_dir = shared_tmp / ".cache" / "mcpi"
    as_second_user(["mkdir", "-p", str(planted_dir)])
    as_second_user(["chmod", "777", str(planted_dir)])
    as_second_user(["ln", "-s", str(victim), str(planted_dir / "mcpi-fused-0123456789abcdef.lock")])
    assert planted_dir.stat().st_uid == other.pw_uid
    own = tmp_path / "cache" / "mcpi"
    assert first_own_directory([planted_dir, own]) == own
    with pytest.raises(OSError):
        os.close(open_own_file(planted_dir / "mcpi-fused-0123456789abcdef.lock"))
    assert victim.read_text() == "mine\n"
    # Not world-writable, still the other user's: the markers it holds are theirs, not ours.
    as_second_user(["chmod", "755", str(planted_dir)])
    assert first_own_directory([planted_dir]) is None


def test_a_refused_numba_cache_is_not_compiled_in_vain_by_the_warming_process(shared_tmp: Path) -> None:
    """``NUMBA_CACHE_DIR`` that a real second user made first (their umask: mode 755) is
    refused, so the warming process has nothing it could keep: it says so and leaves
    before compiling. It compiled the loops in memory all the same (seconds of CPU at
    nice 19, thrown away), and the next worker or run that found the cache cold started
    another: on a loaded machine a test run left a dozen of them compiling."""
    other = second_user()
    cache = shared_tmp / "numba"
    as_second_user(["mkdir", str(cache)])
    assert cache.stat().st_uid == other.pw_uid
    script = (
        "import sys\n"
        "from mcpi_worker.kernels.warm import main\n"
        "print(main(niceness=0), 'mcpi_worker.kernels.fused' in sys.modules)\n"
    )
    environ = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "MCPI_NUMPY_IMPL": "auto"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=600, check=False
    )
    assert (done.returncode, done.stdout) == (0, "0 False\n"), done.stderr
    assert done.stderr == (
        "mcpi_worker.kernels.warm: numba's cache is refused, nothing to warm: "
        f"{cache} is owned by uid {other.pw_uid}, not by this user (uid {os.geteuid()}) or root\n"
    )
