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
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

if TYPE_CHECKING:
    from typing import TypeAlias

    Handler: TypeAlias = "Callable[[int, FrameType | None], Any] | int | signal.Handlers | None"
    """What ``signal.getsignal`` returns."""

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


def heard() -> tuple[signal.Signals, ...]:
    """The ``STOP_SIGNALS`` this process has not been told to ignore: what a command's
    signal receiver listens for. One ignored by whoever started us stays ignored:
    SIGHUP under ``nohup`` (a long run meant to outlive the login), SIGINT for a job a
    script put in the background; receiving them anyway ended a ``nohup mcpi estimate``
    at the first hang-up."""
    return tuple(signum for signum in STOP_SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN)


WAY_IN: Final[str] = "mcpi_coordinator.cli.boot"


class WayIn(Protocol):
    """What the command's way in (``cli.boot``) gives the command once it runs."""

    def release(self, note: Callable[[int], object] | None = None) -> None: ...

    def given_back(self, signum: int, handler: Handler) -> Handler: ...

    def exit_at_once(self) -> None: ...

    def collections_back(self) -> None: ...


def way_in() -> WayIn | None:
    """``cli.boot`` when the command came in through it (the ``mcpi`` script, ``python -m
    mcpi_coordinator``), else None: ``cli.main.main`` called from a program. Looked up,
    never imported: its import holds Ctrl-C, SIGTERM and SIGHUP until ``release``, so a
    program that imported ``cli.main`` (or a test module) had them held, Ctrl-C dropped
    and SIGTERM ignored, until it called ``main``, and for good if it never did."""
    return cast("WayIn | None", sys.modules.get(WAY_IN))


@contextmanager
def handled() -> Iterator[None]:
    """SIGTERM and SIGHUP act as Ctrl-C while the block runs (the command's whole life),
    unless ignored (``heard``), and a Ctrl-C that Python would drop comes again
    (``_interrupt_again``). stdout and stderr are flushed before the handlers are given
    back (``_flush_output``): after the block, SIGTERM and SIGHUP end the process by
    their default action, and a result still in stdout's buffer (stdout a pipe or a
    file) would go with it."""
    boot = way_in()
    _received.clear()
    # From boot's holder straight to ours, and back to the handler boot held them from.
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    if boot is not None:
        previous = {signum: boot.given_back(signum, handler) for signum, handler in previous.items()}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, _as_ctrl_c)
    _hooks.append(sys.unraisablehook)
    sys.unraisablehook = _interrupt_again
    stopping = False
    try:
        try:
            yield
        except BaseException as leaving:
            stopping = True
            if isinstance(leaving, KeyboardInterrupt) and not _received:
                note(signal.SIGINT)  # a plain Ctrl-C: the first stop, whatever comes during the flush
            raise
        finally:
            _flush_output(stopping=stopping)
    finally:
        sys.unraisablehook = _hooks.pop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _flush_output(*, stopping: bool) -> None:
    """Flush stdout and stderr with the stop signals noted, not acted on: whatever the
    command wrote (its result) reaches them whole. A stop signal that comes meanwhile
    (Ctrl-C, SIGTERM, SIGHUP) is reported once the output is out: ``KeyboardInterrupt``
    then, unless the command is ``stopping`` already (leaving by an exception, which
    goes on), so the exit code and line name the first signal, 130, 143 or 129, with
    the result whole on stdout. A flush that blocks (a reader that stopped reading, its
    pipe full) would hold the command for good: a second stop signal during it ends the
    flush (``KeyboardInterrupt``, raised where the write was waiting) and what was not
    written is dropped (``drop_unwritten``), so that nothing tries to write it again on
    the way out; the reader then has part of the output, and the exit code says the
    command was stopped. Raises ``BrokenPipeError`` as a flush does (a reader that left)."""
    came: list[int] = []

    def noted(signum: int, _frame: FrameType | None) -> None:
        note(signum)
        came.append(signum)
        if len(came) > 1:
            raise KeyboardInterrupt

    given_back = {}
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not signal.SIG_IGN:  # an ignored Ctrl-C (a background job) stays ignored
            given_back[signum] = handler
            signal.signal(signum, noted)
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is None:
                continue
            try:
                stream.flush()
            except KeyboardInterrupt:
                drop_unwritten(stream)
                raise
            except ValueError:  # closed: nothing of it left to write
                pass
    finally:
        for signum, handler in given_back.items():
            signal.signal(signum, handler)
    if came and not stopping:
        raise KeyboardInterrupt


def drop_unwritten(stream: object) -> None:
    """Point ``stream``'s descriptor at /dev/null, so that what is still in its buffer is
    not written (or fails) again when it is flushed later, at exit (the recipe of
    Python's ``signal`` documentation, "Note on SIGPIPE"). Nothing where it has no
    descriptor."""
    import os

    try:
        fileno = stream.fileno()  # type: ignore[attr-defined]
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fileno)
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # no descriptor at all: nothing to flush either
        pass
