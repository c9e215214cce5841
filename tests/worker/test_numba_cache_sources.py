"""numba's cache of the kernels follows every kernel source, with real worker processes.

numba checks a module's cached index against that module's own source file only: after
an update that changed ``drive.py`` and ``fused.py`` and not ``lanes.py`` (ca3b00a), it
loaded ``lanes.py``'s machine code compiled against the old ones, which counted zeros, and
the self-check left the worker on NumPy for good. Here a copy of the package in a
temporary directory is compiled by one ``--self-check`` in a first version whose
``fused.py`` differs in a constant ``lanes.py`` compiles in, then ``fused.py`` becomes
this version's and a second ``--self-check`` starts: it must run numba-fused. And where
the cache is stale behind a stamp that says otherwise, the self-check that finds it
wrong removes it, so the next start compiles.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mcpi_worker
from mcpi_worker.numba_marker import KERNEL_SOURCES, SOURCES_STAMP_PREFIX

TIMEOUT = 600  # a cold compile on a loaded 2-core machine, bound against a hang only

pytestmark = pytest.mark.slow


def environment(source: Path, cache: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MCPI_", "NUMBA_"))}
    environ.update(PYTHONPATH=str(source), NUMBA_CACHE_DIR=str(cache), MCPI_OBJECT_CACHE="off")
    return environ


def self_check(source: Path, cache: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-P", "-m", "mcpi_worker", "--self-check"],
        capture_output=True,
        text=True,
        env=environment(source, cache),
        cwd=cache.parent,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def copy_package(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    shutil.copytree(
        Path(mcpi_worker.__file__).parent,
        source / "mcpi_worker",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return source


def build_first_version(source: Path) -> None:
    """The first version's ``fused.py`` tests points against 2**47 where the definition
    says 2**48: its counts differ (its own self-check refuses them, but numba caches its
    machine code all the same), and ``lanes.py``, which takes the constant from
    ``fused.py`` into its compiled code, is the same file in both versions."""
    fused = source / "mcpi_worker" / "kernels" / "fused.py"
    text = fused.read_text()
    assert text.count("np.float32(2.0**48)\n") == 1
    fused.write_text(text.replace("np.float32(2.0**48)\n", "np.float32(2.0**47)\n"))


def update_to_this_version(source: Path) -> None:
    fused = Path("kernels") / "fused.py"
    shutil.copy2(Path(mcpi_worker.__file__).parent / fused, source / "mcpi_worker" / fused)


def the_cache_directory(cache: Path) -> Path:
    (index,) = {path.parent for path in cache.rglob("lanes.*.nbi")}
    return index


def assert_fused_runs(stdout: str) -> None:
    assert "numba-fused unavailable" not in stdout, stdout
    assert "numba-fused  compiled in" in stdout or "numba-fused  loaded from numba's cache in" in stdout, stdout
    assert "same count" in stdout, stdout


def test_a_change_to_drive_alone_recompiles_every_kernel_module(tmp_path: Path) -> None:
    source, cache = copy_package(tmp_path), tmp_path / "numba-cache"
    build_first_version(source)
    assert "numba-fused unavailable" in self_check(source, cache)  # compiled and cached
    lanes_index = sorted(the_cache_directory(cache).glob("lanes.*.nbi"))
    before = {path: path.stat().st_mtime_ns for path in lanes_index}
    update_to_this_version(source)  # lanes.py unchanged: numba alone would load its old code
    assert_fused_runs(self_check(source, cache))
    assert all(path.stat().st_mtime_ns != before[path] for path in lanes_index if path.exists())


def test_the_self_check_removes_machine_code_that_counts_wrong(tmp_path: Path) -> None:
    """A stamp naming the new sources over the old machine code (as a cache written by a
    worker before stamps were kept, stamped by hand): the first start loads it, finds it
    wrong and removes it; the next one compiles and runs numba-fused."""
    source, cache = copy_package(tmp_path), tmp_path / "numba-cache"
    build_first_version(source)
    assert "numba-fused unavailable" in self_check(source, cache)  # compiled and cached
    directory = the_cache_directory(cache)
    update_to_this_version(source)
    for stamp in directory.glob(f"{SOURCES_STAMP_PREFIX}*"):
        stamp.unlink()
    digest = hashlib.sha256()
    for name in KERNEL_SOURCES:
        digest.update((source / "mcpi_worker" / "kernels" / name).read_bytes())
    (directory / f"{SOURCES_STAMP_PREFIX}{digest.hexdigest()[:32]}").write_text("")
    stale = self_check(source, cache)
    assert "numba-fused unavailable" in stale and "was removed" in stale, stale
    assert not list(directory.glob("lanes.*"))
    assert_fused_runs(self_check(source, cache))
