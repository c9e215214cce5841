"""numba's cache and our object cache for the fused kernels: warming them off the run.

Loading the fused implementation costs a worker a few hundredths of a second from our
object cache of its machine code (``native.py``), a fraction of a second from numba's
on-disk cache (``import numba`` is most of it); compiling it (the first time after an
install, or after numba or the kernels changed) costs over ten times that
(docs/worker.md, "First use"). Under
``MCPI_NUMPY_IMPL=auto`` a worker must never be slower than NumPy alone would have been,
so it loads in its own process only from a warm cache; a cold one is compiled by a
separate process at the lowest CPU priority (``python -m mcpi_worker.kernels.warm``),
which takes only CPU time nobody else wants, writes our object cache too (``export.py``:
the same machine code, compiled once more in memory as C entry points, a few seconds),
and marks the cache warm for this run, if it is still counting by then, or the next. A
coordinator that ends what its workers leave behind (``mcpi estimate`` does) would end a
worker's warming process with the run, so it starts one itself and tells its workers not
to (``CACHE_WARMED_BY_PARENT``).

Warm means: a marker file, written after a load through numba in this environment
succeeded and the object cache was written (or could not be)
(``mcpi_worker.numba_marker``, which also starts this process: looking at the marker
imports nothing heavy, where this package loads NumPy).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from mcpi_worker.constants import WARM_NICENESS
from mcpi_worker.numba_marker import NumbaCache, marker_path, open_own_file

AUTOGROUP: Final[Path] = Path("/proc/self/autogroup")

LOWEST_PRIORITY: Final[int] = 19
"""The niceness the warming process adds to its own unless ``MCPI_WARM_NICENESS`` says
otherwise: the lowest priority there is."""


def niceness_wanted(environ: Mapping[str, str] = os.environ) -> int:
    """How much the warming process lowers its priority: ``MCPI_WARM_NICENESS``
    (``constants.WARM_NICENESS``) when it is a whole number from 0 to 19, else 19. Never
    raises: the process's output is discarded, and a value it cannot read must leave it
    at the lowest priority, not at the run's."""
    value = environ.get(WARM_NICENESS, "").strip()
    if value.isdigit() and int(value) <= LOWEST_PRIORITY:
        return int(value)
    return LOWEST_PRIORITY


def lower_session_priority(niceness: int, autogroup: Path = AUTOGROUP) -> bool:
    """Give this process's session ``niceness`` too, where Linux shares CPU by session
    (autogroup, on by default on desktops and many servers): there a process's own nice
    value ranks it only against its own session, and the warming process has a session of
    its own (``start_warming``), so at nice 19 alone it still took a whole session's share
    from the run it was warming for. Only in a session this process leads: run from a
    terminal, it must not lower the priority of everything else in that terminal's
    session. False where nothing was changed (not a session leader, no autogroup)."""
    if os.getsid(0) != os.getpid():
        return False
    try:
        autogroup.write_text(f"{niceness}\n")
    except OSError:  # no autogroup here (the file is missing), or not allowed
        return False
    return True


def main(niceness: int = LOWEST_PRIORITY, *, wait: bool = False) -> int:
    """Compile (or load) the fused kernels at the lowest priority (``niceness`` added to
    this process's and given its session; run as a program, ``MCPI_WARM_NICENESS``'s),
    write our object cache of them (``export.py``), and mark the cache warm; at most one
    such process at a time per marker: the others leave at once, or, with ``wait`` (a
    benchmark that must time warm caches), wait for it and look again."""
    if niceness:
        os.nice(niceness)
        lower_session_priority(niceness)
    path = marker_path()
    if path is None or (path.exists() and _object_cache_loads()):
        return 0
    try:
        lock = os.fdopen(open_own_file(path.with_suffix(".lock")), "w")
    except OSError:
        return 0  # a lock that is a symbolic link (planted), or no room: left cold
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            return 0  # another process is warming it
        if path.exists() and _object_cache_loads():
            return 0  # warmed while this one waited
        if (why := cache_refusal()) is not None:
            # Compiled in memory, the loops would be thrown away: nothing to warm, and a
            # worker under auto stays with NumPy. (It was compiled all the same, seconds
            # of CPU for every worker that found the cache cold, and none of it kept.)
            print(f"mcpi_worker.kernels.warm: numba's cache is refused, nothing to warm: {why}", file=sys.stderr)
            return 0
        from mcpi_worker.kernels.choice import load_numba

        if load_numba().cache_path is None:
            # numba may not cache here (no writable or no safe directory): a worker would
            # compile in its own process every time, so auto stays with NumPy there.
            return 0
        if (why := export_object_cache()) is not None:  # said where someone may read it
            print(f"mcpi_worker.kernels.warm: no object cache: {why}", file=sys.stderr)
        NumbaCache().mark_warm()  # compiled into numba's cache, counts checked
    return 0


def _beside_the_kernels() -> None:
    """Defined in the kernels' directory, whose numba cache directory is theirs: numba
    chooses it by the source file's directory (``numba_cache.refusal``)."""


def cache_refusal() -> str | None:
    """Why numba's cache directory for the kernels is refused (``numba_cache.refusal``),
    or None; imports numba, compiles nothing."""
    from mcpi_worker import numba_cache

    try:
        return numba_cache.refusal(_beside_the_kernels)
    except ImportError:
        return None  # no numba: load_numba says so


def _object_cache_loads() -> bool:
    from mcpi_worker.kernels.choice import FusedUnavailable, load_native

    try:
        load_native()
    except FusedUnavailable:
        return False
    return True


def export_object_cache() -> str | None:
    """Write our object cache of the fused kernels (``export.py``) and check that it
    loads and counts as NumPy does (removing it if not): None, or why there is none.
    The compile is in memory, a few seconds of CPU at this process's priority."""
    from mcpi_worker.kernels import export, native

    try:
        written = export.export()
    except (export.ExportRefused, native.NativeUnavailable, OSError) as exc:
        return str(exc)
    if not _object_cache_loads():
        with contextlib.suppress(OSError):
            written.unlink()
        return f"{written} was written, but does not load or count as NumPy does; removed"
    return None


if __name__ == "__main__":
    sys.exit(main(niceness_wanted()))
