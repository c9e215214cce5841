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
import sys
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Final

from mcpi_worker import numba_cache
from mcpi_worker.constants import CACHE_WARMED_BY_PARENT, WARMING_MODULE
from mcpi_worker.kernel_policy import object_cache_wanted

KERNEL_SOURCES: Final[tuple[str, ...]] = ("drive.py", "fused.py", "fused_range.py", "lanes.py", "export.py")
"""The modules numba compiles (their text is part of the marker's name, and of the key
of the object cache, ``kernels.native``)."""

KERNELS: Final[Path] = Path(__file__).resolve().parent / "kernels"
"""The kernels' package directory: their sources, and numba's cache beside them."""


@cache
def marker_directory() -> Path | None:
    """Where markers go: beside numba's own cache of these modules when that is writable,
    else the user's cache directory; None when neither is (``first_own_directory``)."""
    candidates = [KERNELS / "__pycache__"]
    try:
        user_cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        candidates.append(Path(user_cache) / "mcpi")
    except (RuntimeError, KeyError):  # no home directory to be found
        pass
    return first_own_directory(candidates)


def first_own_directory(candidates: Iterable[Path]) -> Path | None:
    """The first of ``candidates`` (made if missing) that this user can write and no
    other user can: the rule numba's cache is held to (``numba_cache.directory_refusal``).
    What goes there steers this user's processes: a marker says numba's cache is warm,
    our object cache (``kernels.native``) is read from there, and the warming process
    opens its lock there. In a directory another user could write (``XDG_CACHE_HOME``
    or ``HOME`` in ``/tmp``, where whoever comes first makes ``.cache/mcpi``, mode 777 if
    they like) they could plant markers, or a lock that is a symbolic link to a file of
    this user's, which opening it for writing emptied. None: no such directory."""
    for directory in candidates:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK) and numba_cache.directory_refusal(directory) is None:
            return directory
    return None


def open_own_file(path: Path) -> int:
    """A descriptor of ``path`` opened for writing, made if missing (mode 644), never
    through a symbolic link and never truncated. Raises ``OSError``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o644)


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
"""Our object cache of the fused kernels' machine code: ``mcpi-kernels-<name>.bin``
(``kernels.native``), ``<name>`` a hash of ``OBJECT_NAME_FIELDS``."""

OBJECT_FORMAT: Final[int] = 2
"""The object cache file's format version (``kernels.native.FORMAT_VERSION``; 2: the key
has ``host``, and the file is named by ``OBJECT_NAME_FIELDS``). Its home is here so that
it names the file: a file of another format is not looked at, rather than refused."""

OBJECT_NAME_FIELDS: Final[tuple[str, ...]] = ("format", "host", "machine", "python", "numba", "sources")
"""The parts of the object cache's key (``kernels.native.host_key``) that name its file:
those this module works out without llvmlite, whose words for the CPU (the key's
``cpu`` and ``cpu_features``) take a fifth of a second to get; ``host``
(``cpu_identity``) stands for the CPU. So ``has_object`` finds this host's file by its
name alone, and a file another CPU wrote into a shared directory has another name: it
is never opened here. The whole key, checked inside the file, stays the judge."""

_CPU_FIELDS: Final[frozenset[str]] = frozenset({
    "vendor_id", "cpu family", "model", "model name", "stepping", "flags",  # x86
    "CPU implementer", "CPU architecture", "CPU variant", "CPU part", "CPU revision", "Features",  # arm
})  # fmt: skip
"""What ``/proc/cpuinfo`` says of a CPU that sets it apart from another (its make,
model and features), and not of its state (clock, microcode, which core)."""


@cache
def cpu_identity() -> str:
    """This machine's CPU in a few lines, read without importing anything: the machine
    (``uname``) and, on Linux, what ``/proc/cpuinfo`` says of its first processor
    (``_CPU_FIELDS``). Two CPUs that differ in model or features differ here."""
    lines = [os.uname().machine]
    try:
        with open("/proc/cpuinfo", "rb") as file:
            text = file.read(1 << 16).decode(errors="replace")
    except OSError:  # not Linux: the machine alone
        return lines[0]
    for line in text.split("\n\n", 1)[0].splitlines():
        name, _, value = line.partition(":")
        if name.strip() in _CPU_FIELDS:
            lines.append(f"{name.strip()}: {value.strip()}")
    return "\n".join(lines)


def sources_digest() -> str:
    """A hash of every kernel source the machine code is compiled from. Raises ``OSError``."""
    digest = hashlib.sha256()
    for name in KERNEL_SOURCES:
        digest.update((KERNELS / name).read_bytes())
    return digest.hexdigest()


SOURCES_STAMP_PREFIX: Final[str] = "mcpi-sources-"
"""The stamp in numba's cache directory of the kernels naming the sources its files were
compiled from: ``mcpi-sources-<digest>`` (``match_numba_cache_to_sources``)."""


def numba_cache_files(directory: Path) -> list[Path]:
    """numba's files for the kernel modules in ``directory`` (numba's cache directory of
    the kernels): ``<module>.<function>-<line>.pyXY.nbi`` and ``....nbc``."""
    modules = tuple(f"{Path(name).stem}." for name in KERNEL_SOURCES)
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    return [
        Path(entry.path)
        for entry in entries
        if entry.name.startswith(modules) and entry.name.endswith((".nbi", ".nbc"))
    ]


def discard_numba_cache(directory: Path) -> None:
    """Remove numba's files of every kernel module from ``directory``, and the sources
    stamp last: the next load compiles them all. Never raises (a file another process
    removed meanwhile, or one that cannot be removed, is left to numba: a missing data
    file is a miss to it)."""
    for path in numba_cache_files(directory):
        with contextlib.suppress(OSError):
            path.unlink()
    for stamp in directory.glob(f"{SOURCES_STAMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            stamp.unlink()


def match_numba_cache_to_sources(directory: Path) -> bool:
    """Make numba's cache of the kernels in ``directory`` hold only machine code of the
    sources on disk now; True when it had to be emptied.

    numba's index of a module's functions is checked against that module's own source
    file only (its size and time), not against the modules its functions call: after an
    update that changed ``drive.py`` or ``fused.py`` and not ``lanes.py``, numba loads
    ``lanes.py``'s machine code built against the old ones, which counts wrong (the
    self-check refuses it, and NumPy counted from then on). So the directory holds a stamp
    named by ``sources_digest`` (every kernel source): where this one is missing, every
    kernel module's numba files are removed and the stamp written after. Two versions
    installed side by side have two source directories, hence two numba cache
    directories. A process of another version sharing this one (a checkout switched
    under a running process, or its cache-warming process) that saves after the stamp
    was written saves under its own source stamps, which numba takes for this version's
    where a module's file did not change: one start then loads that machine code, its
    self-check refuses it and ``choice.load_numba`` empties the directory (that start
    counts with NumPy; the next compiles). Two processes of this version emptying it at
    once cost a compile at most: numba writes its files whole under a temporary name and
    takes a file missing under its index for a miss. Never raises: a directory that
    cannot be emptied or stamped is numba's to miss in (``OSError`` ignored)."""
    try:
        stamp = directory / f"{SOURCES_STAMP_PREFIX}{sources_digest()[:32]}"
    except OSError:  # sources not on disk: nothing to key by
        return False
    if stamp.exists():
        return False
    discard_numba_cache(directory)
    with contextlib.suppress(OSError):
        os.close(open_own_file(stamp))
    return True


def object_file_name(key: Mapping[str, str]) -> str:
    """The object cache file's name for ``key`` (its ``OBJECT_NAME_FIELDS``)."""
    named_by = "\0".join(f"{field}={key.get(field, '')}" for field in OBJECT_NAME_FIELDS)
    digest = hashlib.sha256(named_by.encode()).hexdigest()[:16]
    return f"{OBJECT_CACHE_PREFIX}{digest}{OBJECT_CACHE_SUFFIX}"


@cache
def object_name_here() -> str | None:
    """The name this process's object cache file has (``object_file_name``); None
    without numba, or where the kernels' sources cannot be read."""
    version = numba_version()
    if version is None:
        return None
    try:
        sources = sources_digest()
    except OSError:
        return None
    here = {"format": str(OBJECT_FORMAT), "host": cpu_identity(), "machine": os.uname().machine,
            "python": sys.version, "numba": version, "sources": sources}  # fmt: skip
    return object_file_name(here)


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


@cache
def _nowhere_to_cache() -> str | None:
    if numba_version() is None or marker_directory() is not None:
        return None
    named = os.environ.get("NUMBA_CACHE_DIR", "")
    if named and first_own_directory([Path(named)]) is not None:
        return None
    looked = [str(KERNELS / "__pycache__"), "$XDG_CACHE_HOME or ~/.cache"]
    if named:
        looked.insert(0, f"NUMBA_CACHE_DIR ({named})")
    return f"no directory to keep numba's cache in that only this user can write: {', '.join(looked)}"


class NumbaCache:
    """numba's cache for the fused kernels, as ``choice.NumpyKernel`` sees it."""

    def is_warm(self) -> bool:
        """True when a load in this process would take the machine code from the cache
        (or when there is no marker to go by: then loading is all there is to do)."""
        path = marker_path()
        return path is None or path.exists()

    def has_object(self) -> bool:
        """Whether this host's object cache file is there (``kernels.native``): then a
        load usually takes a tenth of the CPU. Looked for by its name
        (``object_name_here``): a file of another CPU sharing the directory is not this
        host's (counting it made ``auto`` load early, then through numba, and kept
        ``mcpi estimate`` from having this host's file written). One look at one path,
        no import."""
        directory = object_cache_directory()
        name = object_name_here()
        if directory is None or name is None:
            return False
        return (directory / name).is_file()

    def wants_warming(self) -> bool:
        """Whether the warming process has work to do here: numba's cache is cold, or our
        object cache is wanted (``MCPI_OBJECT_CACHE``) and has no file (an install from
        before it, a cleaned directory). False without numba or a place for the marker.
        Looks at two paths, imports nothing heavy."""
        if marker_path() is None:
            return False
        return not self.is_warm() or (object_cache_wanted() and not self.has_object())

    def unavailable(self) -> str | None:
        """Why numba has no directory here to keep the kernels' machine code in, or None
        (also without numba: its load fails anyway). numba's choices mirror the markers':
        ``NUMBA_CACHE_DIR``, the kernels' ``__pycache__``, the user's cache directory;
        none of them is a directory this user alone can write (``first_own_directory``,
        the rule ``numba_cache`` holds numba's cache to). Cached: a few ``stat`` calls."""
        return _nowhere_to_cache()

    def mark_warm(self) -> None:
        path = marker_path()
        if path is not None:
            with contextlib.suppress(OSError):
                os.close(open_own_file(path))

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
    import subprocess  # here, not at the top: a worker imports this module on its critical path

    package_parent = str(KERNELS.parent.parent)
    path = os.environ.get("PYTHONPATH")
    environ = {**os.environ, "PYTHONPATH": package_parent + (os.pathsep + path if path else "")}
    with contextlib.suppress(OSError):
        subprocess.Popen(
            [sys.executable, "-P", "-m", WARMING_MODULE],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=environ,
        )
