"""``mcpi`` and ``python -m mcpi_coordinator`` start here: Ctrl-C is held first,
everything else after.

Python turns Ctrl-C into ``KeyboardInterrupt`` wherever the main thread is, and a
command's first half second is imports: one there printed a 20–40-line traceback from
some library's module body. ``cli.main.main`` catches ``KeyboardInterrupt`` (exit 130,
one line), but only from inside its ``try``; this module, which holds the signals
before it imports anything (``_signal`` is built in), closes the gap before it: a Ctrl-C
that comes while the command's modules load is held here, and raised as
``KeyboardInterrupt`` inside that ``try`` (``release``), where Python's own handler is
put back for the rest of the run (Trio installs its handler only over Python's). SIGTERM
and SIGHUP, Ctrl-C's equals once the command runs (``cli.signals``), are held the same
way: before, either killed the command by its default action, without a word, where a
moment later it said so and exited 143 or 129.

What is left unguarded is what runs before this module's first line: the interpreter's
own start, ``site`` (and the ``.pth`` files of the environment: an editable install's
finder imports ``pathlib``), the console script's own lines and this package's
``__init__`` modules, which import nothing. A Ctrl-C there is Python's: a traceback and
death by SIGINT (or, inside ``site``, "Fatal Python error" and exit 1); SIGTERM and SIGHUP
there end the process by their default action, without a word (a shell says 143 or
129). docs/faults.md has the sweep that measures that window.

Only the command's way in imports this module: code that imports ``mcpi_coordinator``
as a library keeps its SIGINT handling untouched.
"""

from __future__ import annotations

# The hold comes first, before this module imports anything the interpreter has not
# loaded already: ``signal`` (which builds its enums as it is imported) is a noticeable
# part of the window between Python's Ctrl-C handler and ours. ``_signal`` is built in
# and loaded at the interpreter's start; ``signal``'s functions are its, wrapped.
import _signal  # type: ignore[import-not-found]  # no stub in typeshed: the module signal wraps

_held: list[int] = []

_STOPS: dict[int, object] = {
    _signal.SIGINT: _signal.default_int_handler,
    _signal.SIGTERM: _signal.SIG_DFL,
    _signal.SIGHUP: _signal.SIG_DFL,
}
"""The signals held, each with the handler it is held only from (and given back)."""


def _hold(signum: int, _frame: object) -> None:
    _held.append(signum)


def hold() -> None:
    """Hold Ctrl-C, SIGTERM and SIGHUP until ``release``. One that is ignored, or handled
    by whoever started us (``nohup``, a background job of a script), is left as it is."""
    for signum, default in _STOPS.items():
        if _signal.getsignal(signum) == default:
            _signal.signal(signum, _hold)


hold()

import signal  # noqa: E402  # after the hold (above)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; mypy knows the name
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import TypeAlias

    _Handler: TypeAlias = "Callable[[int, FrameType | None], object] | int | signal.Handlers | None"
    """What ``signal.getsignal`` returns."""


def given_back(signum: int, handler: _Handler) -> _Handler:
    """The handler ``release`` gives ``signum`` back when ``handler`` is this module's
    holder, else ``handler``: what a caller that takes a held signal over (``cli.signals.handled``)
    must restore when it is done, rather than the holder."""
    return _given(signum) if handler is _hold and signum in _STOPS else handler


def release(note: Callable[[int], object] | None = None) -> None:
    """Give the held signals their handlers back; if any came while held, pass each to
    ``note`` in order (``cli.signals.note``: the first decides the command's line and exit
    code) and raise ``KeyboardInterrupt``. Does nothing where ``hold`` did not hold them
    (``main`` called from Python), nor for a signal whose handler someone else has put
    in place of the holder since (``cli.signals.handled``, entered first so that SIGTERM
    and SIGHUP never pass through their default action, which ends the process)."""
    for signum in _STOPS:
        if signal.getsignal(signum) is _hold:
            signal.signal(signum, _given(signum))
    if _held:
        came = list(_held)
        _held.clear()
        for held in came:
            if note is not None:
                note(held)
        raise KeyboardInterrupt


def _given(signum: int) -> _Handler:
    """The handler ``signum`` is held from, as ``signal`` names it (``SIG_DFL`` an enum member)."""
    return signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL


def hold_collections() -> None:
    """Turn the cyclic garbage collector off while ``mcpi estimate`` imports what it runs
    (``mcpi_worker.collector`` says why; ``collections_back`` turns it on). Only for
    ``estimate``, whose handler gives the collector back once its modules are imported; a
    command that never gets there (a usage error, ``--help``) ends with it off."""
    from mcpi_worker import collector

    collector.hold()


def collections_back() -> None:
    """Turn the collector back on if ``hold_collections`` turned it off, what the imports
    made moved out of its sight first (``collector.release``). Does nothing elsewhere
    (the command run from Python, its tests)."""
    from mcpi_worker import collector

    collector.release()


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
    import sys

    from mcpi_worker.standard_fds import fill_closed

    fill_closed()  # before anything can take a missing one's number: a worker's pipe, a checkpoint
    if sys.argv[1:2] == ["estimate"]:
        hold_collections()
    from mcpi_coordinator.cli.main import main as run

    code = run()
    import threading

    others = [thread for thread in threading.enumerate() if thread is not threading.current_thread()]
    watched = sys.getprofile() is not None or sys.gettrace() is not None  # a profiler's report comes at exit
    if _exit_at_once and not watched and all(thread.daemon for thread in others):
        from mcpi_worker.leaving import leave  # no non-daemon thread for sys.exit to join first

        leave(code)
    return code
