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


def main() -> int:
    """The ``mcpi`` console script: ``cli.main.main`` imported while Ctrl-C is held."""
    from mcpi_coordinator.cli.main import main as run

    return run()
