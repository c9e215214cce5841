"""SIGTERM and SIGHUP stop ``mcpi`` the way Ctrl-C does: cancel, reap every worker,
print one line, exit 128 + the signal's number.

Ctrl-C already has the orderly path (Trio turns SIGINT into ``KeyboardInterrupt`` at a
safe point, or a command's own signal receiver cancels its run). Rather than a second
path, the handlers installed here note which signal came and raise SIGINT in this
process, so every command takes that same path; the exit code and message then name
the signal that really came. Raising ``KeyboardInterrupt`` from the handler directly
would be unsafe inside Trio, which protects its own internals only from SIGINT.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
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
    note(signum)
    signal.raise_signal(signal.SIGINT)


@contextmanager
def handled() -> Iterator[None]:
    """SIGTERM and SIGHUP act as Ctrl-C while the block runs (the command's whole life)."""
    _received.clear()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    for signum in previous:
        signal.signal(signum, _as_ctrl_c)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
