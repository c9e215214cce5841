"""SIGTERM and SIGHUP stop ``mcpi`` the way Ctrl-C does: cancel, reap every worker,
print one line, exit 128 + the signal's number.

Ctrl-C already has the orderly path (Trio turns SIGINT into ``KeyboardInterrupt`` at a
safe point, or a command's own signal receiver cancels its run). Rather than a second
path, the handlers installed here note which signal came and raise SIGINT in this
process, so every command takes that same path; the exit code and message then name
the signal that really came. Raising ``KeyboardInterrupt`` from the handler directly
would be unsafe inside Trio, which protects its own internals only from SIGINT; it is
done only where SIGINT is ignored, and so would be dropped (Trio leaves an ignored
SIGINT alone, and protects nothing then either).
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Final

STOP_SIGNALS: Final[tuple[signal.Signals, ...]] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What stops a run in an orderly way. A command with a Trio signal receiver listens
for all three."""

_WORDS: Final[dict[int, str]] = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "terminated (SIGTERM)",
    signal.SIGHUP: "hung up (SIGHUP)",
}

_received: list[int] = []


def note(signum: int) -> None:
    """Record a stop signal (the first one decides the exit code and the message)."""
    _received.append(signum)


def stopped_by() -> int:
    """The signal that stopped the run: the first noted, SIGINT if none was."""
    return _received[0] if _received else signal.SIGINT


def stopped_words() -> str:
    """``interrupted``, ``terminated (SIGTERM)`` or ``hung up (SIGHUP)``."""
    return _WORDS.get(stopped_by(), f"stopped by signal {stopped_by()}")


def _as_ctrl_c(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM or SIGHUP: noted, then Ctrl-C's path. A process whose SIGINT is ignored
    (a job a script put in the background: the shell ignores SIGINT for it) would drop
    that SIGINT, and SIGTERM stopped nothing: the ``KeyboardInterrupt`` is raised here
    then, as Python's own SIGINT handler would have raised it."""
    note(signum)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


RESEND_AFTER_S: Final = 0.05
"""How long a dropped Ctrl-C waits to be sent again: long enough for the main thread to
have left the hook that dropped it (a fork's hooks take microseconds)."""


def _interrupt_again(unraisable: sys.UnraisableHookArgs) -> None:
    """``sys.unraisablehook`` while a command runs: a Ctrl-C that Python dropped is
    sent again.

    A signal handler runs wherever the main thread next executes Python code, and some
    code cannot raise: a fork's at-fork hooks, ``__del__`` methods, weakref callbacks.
    ``logging`` releases its lock in an at-fork hook after every ``os.fork``, and a
    signal that comes while the process forks waits for that hook. A
    ``KeyboardInterrupt`` raised there was printed as "Exception ignored" and dropped,
    and the command ran on as if Ctrl-C (or SIGTERM, which becomes it) had never come:
    ``mcpi bench`` signalled while a pool forked its workers went on measuring. Sending
    SIGINT again from here would run the handler in this hook again, so a thread sends
    it a moment later, as a real signal, which also interrupts a main thread waiting on
    a lock by then; dropped again, it comes round again."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        main = threading.main_thread().ident
        if main is not None:
            # Not threading.Thread: its start() waits for the thread, a wait that the
            # signal it sends would interrupt, here, where nothing can raise.
            _thread.start_new_thread(_resend, (main,))
            return
    _hooks[-1](unraisable)


def _resend(main: int) -> None:
    time.sleep(RESEND_AFTER_S)
    signal.pthread_kill(main, signal.SIGINT)


_hooks: list[Callable[[sys.UnraisableHookArgs], object]] = [sys.__unraisablehook__]
"""The ``sys.unraisablehook`` each ``handled`` block replaced (the last is in force
under it), for whatever is not a dropped ``KeyboardInterrupt``."""


@contextmanager
def handled() -> Iterator[None]:
    """SIGTERM and SIGHUP act as Ctrl-C while the block runs (the command's whole life),
    and a Ctrl-C that Python would drop comes again (``_interrupt_again``)."""
    from mcpi_coordinator.cli import boot  # imports only signal

    _received.clear()
    # From boot's holder straight to ours, and back to the handler boot held them from.
    previous = {signum: boot.given_back(signum, signal.getsignal(signum)) for signum in (signal.SIGTERM, signal.SIGHUP)}
    for signum in previous:
        signal.signal(signum, _as_ctrl_c)
    _hooks.append(sys.unraisablehook)
    sys.unraisablehook = _interrupt_again
    try:
        yield
    finally:
        sys.unraisablehook = _hooks.pop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
