"""Where a worker's low-level failures become mcpi errors: the one place.

A broken or closed pipe (``trio.BrokenResourceError``, ``trio.ClosedResourceError``) or
an ``OSError`` met while starting a worker, writing to it or reading from it ends that
worker's connection with a ``WorkerFailure`` whose message says what was being done
(``worker_failures``, ``worker_failure``); the connection and the pool's start of a
worker are their users. ``describe_exit`` puts a process's exit status in words for
such messages.

A worker that exits at once (a wrong ``--worker-cmd``: ``true``, a script that fails
before its handshake) breaks our write of the ``hello`` and closes its stdout; those
are consequences, and its exit status is what happened. So a broken pipe, or a stdout
closed before the welcome, first waits a moment for the process's exit (``exit_first``)
and the exit, once noticed, is reported instead. What a worker wrote on its stdout in
place of frames is quoted by ``not_frames``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import trio

from mcpi_coordinator.errors import WorkerFailure
from mcpi_coordinator.terminal_text import printable

EXIT_FIRST_S: Final[float] = 1.0
"""How long a broken pipe, or a stdout closed before the welcome, waits for the worker's
exit to be noticed before it is reported itself: the exit is normally what caused it
and follows at once; a worker that closed its stdin and lives on is not kept waiting."""

QUOTE_CHARS: Final[int] = 120
"""The most of a worker's stdout that ``not_frames`` quotes."""

LowLevelError = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
"""What ``worker_failures`` translates: a broken or closed pipe, the OS.

Not the protocol core's ``FatalProtocolError``/``RequestError``: ``CoordinatorEnd``'s
``receive_data``/``receive_eof`` catch those themselves and report ``Broken``, and no
other call in a ``worker_failures`` block raises them."""


@contextmanager
def worker_failures(doing: str) -> Iterator[None]:
    """Translate low-level failures while ``doing`` something with a worker into a
    ``WorkerFailure`` with a one-line reason. ``doing`` completes "while ...".

    Raises that ``WorkerFailure`` (chained to the low-level error) in place of a
    ``LowLevelError``; cancellation (``trio.Cancelled``) and programming errors pass
    through untouched.
    """
    try:
        yield
    except LowLevelError as error:
        raise worker_failure(error, doing) from error


def worker_failure(error: BaseException, doing: str) -> WorkerFailure:
    """The ``WorkerFailure`` that ``error`` (one of ``LowLevelError``), met while
    ``doing`` something, stands for. For hot paths where a ``with worker_failures``
    block costs more than the work in it. Raises ``AssertionError`` for any other
    error: the caller catches only ``LowLevelError``."""
    if isinstance(error, trio.BrokenResourceError):
        return WorkerFailure(f"pipe broken while {doing}")
    if isinstance(error, trio.ClosedResourceError):
        return WorkerFailure(f"pipe already closed while {doing}")
    assert isinstance(error, OSError), error
    reason = error.strerror or type(error).__name__
    target = f": {error.filename!r}" if error.filename else ""
    return WorkerFailure(f"{reason}{target} while {doing}")


def describe_exit(returncode: int | None) -> str:
    """``exit code 3``, ``killed by SIGKILL``, or ``still running``: a process's
    ``returncode`` (negative for a signal, None while it runs) in words."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"


def is_broken_pipe(error: BaseException | None) -> bool:
    """Whether ``error`` is a write into a pipe nobody reads any more (EPIPE, as the OS or
    Trio says it): most often, the worker has exited."""
    return isinstance(error, (BrokenPipeError, trio.BrokenResourceError))


async def exit_first(exited: trio.Event) -> None:
    """Wait until ``exited`` (the worker's process has exited), at most ``EXIT_FIRST_S``,
    before reporting a broken pipe or a closed stdout: the watcher of the process then
    reports its exit, which says more, and a connection's first reason wins. Never raises
    but ``trio.Cancelled``."""
    with trio.move_on_after(EXIT_FIRST_S):
        await exited.wait()


def not_frames(head: bytes) -> str | None:
    """What a worker wrote at the start of its stdout, quoted (``printable``, at most
    ``QUOTE_CHARS``), when it cannot be frames, else None. A frame opens with its 4-byte
    big-endian length, below the 1 MiB limit (protocol.md), so its first byte is 0; any
    other first byte is text or noise a wrong ``--worker-cmd`` printed."""
    if not head or head[0] == 0:
        return None
    text = head.decode("utf-8", "replace").strip()
    quoted = printable(text[:QUOTE_CHARS]) + ("..." if len(text) > QUOTE_CHARS else "")
    return f"'{quoted}'"
