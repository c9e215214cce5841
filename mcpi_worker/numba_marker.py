"""Whether numba's cache for the fused kernels is warm (its marker), and starting the
process that warms it (``python -m mcpi_worker.kernels.warm``, which ``kernels.warm``
describes).

Warm means: a marker file, written after a load in this environment succeeded, named
by what the machine code depends on (numba's version, the kernels' sources, the
interpreter, ``NUMBA_CACHE_DIR``). This module sits outside ``mcpi_worker.kernels``,
whose package import loads NumPy: ``mcpi estimate`` looks at the marker at every run,
small ones included, and checking it imports nothing heavy. A cache removed behind the
marker's back only costs one in-process compile.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Final

from mcpi_worker.constants import CACHE_WARMED_BY_PARENT
from mcpi_worker.kernel_policy import object_cache_wanted

KERNEL_SOURCES: Final[tuple[str, ...]] = ("drive.py", "fused.py", "fused_range.py", "lanes.py", "export.py")
"""The modules numba compiles (their text is part of the marker's name, and of the key
of the object cache, ``kernels.native``)."""

KERNELS: Final[Path] = Path(__file__).resolve().parent / "kernels"
"""The kernels' package directory: their sources, and numba's cache beside them."""


@cache
def marker_directory() -> Path | None:
    """Where markers go: beside numba's own cache of these modules when that is writable,
    else the user's cache directory; None when neither is."""
    candidates = [KERNELS / "__pycache__"]
    try:
        user_cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        candidates.append(Path(user_cache) / "mcpi")
    except (RuntimeError, KeyError):  # no home directory to be found
        pass
    for directory in candidates:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            return directory
    return None


def numba_version() -> str | None:
    """The installed numba's version, without importing it; None without numba.

    Read from the name of the ``numba-VERSION.dist-info`` directory beside the package,
    where pip puts it: ``importlib.metadata`` would say the same, but its import and its
    walk over every installed distribution were a large share of a small run's start-up
    (``mcpi estimate`` checks the marker at every run). It answers where that name is
    not there to read (another kind of install)."""
    try:
        spec = importlib.util.find_spec("numba")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        infos = list(Path(location).parent.glob("numba-*.dist-info"))
        if len(infos) == 1:
            return infos[0].name.removeprefix("numba-").removesuffix(".dist-info")
    from importlib import metadata

    try:
        return metadata.version("numba")
    except metadata.PackageNotFoundError:
        return None


OBJECT_CACHE_PREFIX: Final[str] = "mcpi-kernels-"
OBJECT_CACHE_SUFFIX: Final[str] = ".bin"
"""Our object cache of the fused kernels' machine code: ``mcpi-kernels-<key>.bin``
(``kernels.native``)."""


def object_cache_directory(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where our object cache goes: the directory ``NUMBA_CACHE_DIR`` names, where the
    user put numba's cache; else beside the markers (``marker_directory``); None: nowhere."""
    named = environ.get("NUMBA_CACHE_DIR", "")
    return Path(named) if named else marker_directory()


@cache
def marker_path() -> Path | None:
    """This environment's marker (None: nowhere to keep one)."""
    directory = marker_directory()
    if directory is None:
        return None
    version = numba_version()
    if version is None:
        return None  # no numba: nothing to warm
    key = hashlib.sha256()
    key.update(version.encode())
    key.update(sys.version.encode())
    key.update(os.environ.get("NUMBA_CACHE_DIR", "").encode())
    try:
        for name in KERNEL_SOURCES:
            key.update((KERNELS / name).read_bytes())
    except OSError:  # sources not on disk (a zip): nothing to name the marker by
        return None
    return directory / f"mcpi-fused-{key.hexdigest()[:16]}.warm"


class NumbaCache:
    """numba's cache for the fused kernels, as ``choice.NumpyKernel`` sees it."""

    def is_warm(self) -> bool:
        """True when a load in this process would take the machine code from the cache
        (or when there is no marker to go by: then loading is all there is to do)."""
        path = marker_path()
        return path is None or path.exists()

    def has_object(self) -> bool:
        """Whether an object cache file is there (``kernels.native``): then a load
        usually takes a tenth of the CPU (one for another CPU sharing the directory
        would make it numba's after all). One look at a directory, no import."""
        directory = object_cache_directory()
        if directory is None:
            return False
        try:
            with os.scandir(directory) as entries:
                return any(
                    entry.name.startswith(OBJECT_CACHE_PREFIX) and entry.name.endswith(OBJECT_CACHE_SUFFIX)
                    for entry in entries
                )
        except OSError:
            return False

    def wants_warming(self) -> bool:
        """Whether the warming process has work to do here: numba's cache is cold, or our
        object cache is wanted (``MCPI_OBJECT_CACHE``) and has no file (an install from
        before it, a cleaned directory). False without numba or a place for the marker.
        Looks at two paths, imports nothing heavy."""
        if marker_path() is None:
            return False
        return not self.is_warm() or (object_cache_wanted() and not self.has_object())

    def mark_warm(self) -> None:
        path = marker_path()
        if path is not None:
            with contextlib.suppress(OSError):
                path.touch()

    def warm(self) -> None:
        """Start the warming process (``start_warming``), unless the process that
        started this one said it warms the cache itself (``CACHE_WARMED_BY_PARENT``):
        a coordinator that ends what its workers leave behind would end ours with the
        run, before the cache is warm."""
        if os.environ.get(CACHE_WARMED_BY_PARENT) != "1":
            start_warming()


def start_warming() -> None:
    """Start ``python -m mcpi_worker.kernels.warm`` in a session of its own, its output
    discarded, running the package this process runs (not one the current directory may
    hold). It may outlive its parent: the compile is bounded, at the lowest priority, and
    its work is what the next run loads. Never raises: a cache left cold costs speed only."""
    package_parent = str(KERNELS.parent.parent)
    path = os.environ.get("PYTHONPATH")
    environ = {**os.environ, "PYTHONPATH": package_parent + (os.pathsep + path if path else "")}
    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-P", "-m", "mcpi_worker.kernels.warm"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=environ,
        )
