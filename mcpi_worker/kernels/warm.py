"""numba's cache for the fused kernels: whether it is warm, and warming it off the run.

Loading the fused implementation from numba's on-disk cache costs a worker a fraction of
a second of CPU; compiling it (the first time after an install, or after numba or the
kernels changed) costs over ten times that (docs/worker.md, "First use"). Under
``MCPI_NUMPY_IMPL=auto`` a worker must never be slower than NumPy alone would have been,
so it loads in its own process only from a warm cache; a cold one is compiled by a
separate process at the lowest CPU priority (``python -m mcpi_worker.kernels.warm``),
which takes only CPU time nobody else wants and marks the cache warm for this run, if it
is still counting by then, or the next. A coordinator that ends what its workers leave
behind (``mcpi estimate`` does) would end a worker's warming process with the run, so it
starts one itself and tells its workers not to (``CACHE_WARMED_BY_PARENT``).

Warm means: a marker file, written after a load in this environment succeeded
(``mcpi_worker.numba_marker``, which also starts this process: looking at the marker
imports nothing heavy, where this package loads NumPy).
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path
from typing import Final

from mcpi_worker.numba_marker import NumbaCache, marker_path

AUTOGROUP: Final[Path] = Path("/proc/self/autogroup")


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


def main(niceness: int = 19) -> int:
    """Compile (or load) the fused kernels at the lowest priority (``niceness`` added to
    this process's) and mark the cache warm; at most one such process at a time per
    marker (the others leave at once)."""
    os.nice(niceness)
    lower_session_priority(niceness)
    path = marker_path()
    if path is None or path.exists():
        return 0
    with open(path.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0  # another process is warming it
        from mcpi_worker.kernels.choice import load_fused

        if load_fused().cache_path is not None:  # compiled into numba's cache, counts checked
            NumbaCache().mark_warm()
        # else numba may not cache here (no writable or no safe directory): a worker would
        # compile in its own process every time, so auto stays with NumPy there.
    return 0


if __name__ == "__main__":
    sys.exit(main())
