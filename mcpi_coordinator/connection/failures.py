"""Where a worker's low-level failures become mcpi errors: the one place.

A broken or closed pipe (``trio.BrokenResourceError``, ``trio.ClosedResourceError``) or
an ``OSError`` met while starting a worker, writing to it or reading from it ends that
worker's connection with a ``WorkerFailure`` whose message says what was being done
(``worker_failures``, ``worker_failure``); the connection and the pool's start of a
worker are their users. ``describe_exit`` puts a process's exit status in words for
such messages.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from mcpi_coordinator.errors import WorkerFailure

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
