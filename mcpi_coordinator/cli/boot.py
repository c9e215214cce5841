"""``mcpi`` and ``python -m mcpi_coordinator`` start here: Ctrl-C is held first,
everything else after.

Python turns Ctrl-C into ``KeyboardInterrupt`` wherever the main thread is, and a
command's first half second is imports: one there printed a 20–40-line traceback from
some library's module body. ``cli.main.main`` catches ``KeyboardInterrupt`` (exit 130,
one line), but only from inside its ``try``; this module, which imports nothing but
``signal``, closes the gap before it: a Ctrl-C that comes while the command's modules
load is held here, and raised as ``KeyboardInterrupt`` inside that ``try`` (``release``),
where Python's own handler is put back for the rest of the run (Trio installs its
handler only over Python's). What is left unguarded is the interpreter's own start.

Only the command's way in imports this module: code that imports ``mcpi_coordinator``
as a library keeps its SIGINT handling untouched.
"""

from __future__ import annotations

import signal

_held: list[int] = []


def _hold(signum: int, _frame: object) -> None:
    _held.append(signum)


def hold() -> None:
    """Hold Ctrl-C until ``release``. A SIGINT that is ignored (``nohup``, a background
    job of a script) stays ignored."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _hold)


def release() -> None:
    """Give Ctrl-C back to Python; raise ``KeyboardInterrupt`` if one came while held.
    Does nothing where ``hold`` did not hold it (``main`` called from Python)."""
    if signal.getsignal(signal.SIGINT) is _hold:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _held:
        _held.clear()
        raise KeyboardInterrupt


hold()


def load_structlog_without_rich() -> None:
    """Import structlog with rich out of its sight, unless it is loaded already.

    structlog looks for rich once, as it is imported, to format tracebacks in console
    logs, and loads it (with pygments) when it finds it: a large share of a small run's
    imports, for tracebacks the command never prints (its errors are one line). rich
    stays importable afterwards, for the progress bar that draws with it."""
    import sys

    if "structlog" in sys.modules:
        return
    hide = "rich" not in sys.modules
    if hide:
        sys.modules["rich"] = None  # type: ignore[assignment]  # makes ``import rich`` fail
    try:
        import structlog  # noqa: F401  # structlog.dev looks for rich here, once
    finally:
        if hide:
            del sys.modules["rich"]


_exit_at_once: list[bool] = []


def exit_at_once() -> None:
    """Let the command leave with ``os._exit`` once it has finished (``main`` says how).

    Called by a command whose every process is its own to reap and whose files are
    closed when it returns: ``mcpi estimate``. Not by one that runs other libraries'
    process pools (``mcpi bench``): those stop their workers in the interpreter's own
    exit (``concurrent.futures`` in threading's exit hooks, ``multiprocessing`` in
    atexit's), which ``os._exit`` would skip, leaving the workers running."""
    _exit_at_once.append(True)


def main() -> int:
    """The ``mcpi`` console script: ``cli.main.main`` imported while Ctrl-C is held.

    A command that asked for it (``exit_at_once``) leaves with ``os._exit`` once it has
    finished, its exit handlers have run (``launch.early``'s, which reaps workers
    nobody took) and its output is flushed: everything it wrote is closed by then (a
    checkpoint is committed and closed before the result is printed, a plot written and
    closed), its workers are reaped, and tearing every module down would only cost a
    small run a noticeable part of its time (``benchmarks/tiny.py``). numba's
    cache-warming process, when one was started, is meant to outlive the command and
    does either way. A non-daemon thread still running would be killed by ``os._exit``,
    and a profiler or coverage tool watching the command writes its report at the usual
    exit: with either, the command ends the usual way.
    """
    from mcpi_coordinator.cli.main import main as run

    code = run()
    import sys
    import threading

    others = [thread for thread in threading.enumerate() if thread is not threading.current_thread()]
    watched = sys.getprofile() is not None or sys.gettrace() is not None  # a profiler's report comes at exit
    if _exit_at_once and not watched and all(thread.daemon for thread in others):
        from mcpi_worker.leaving import leave  # no non-daemon thread for sys.exit to join first

        leave(code)
    return code
