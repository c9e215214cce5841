"""mcpi's own errors, and the one place low-level failures are translated into them.

Everything a user may see is an ``McpiError`` whose ``str()`` is one line fit to print
after ``mcpi: error:``. Low-level failures never leave the pool. A worker's bytes that
do not parse or break a rule never raise here: the protocol core's ``CoordinatorEnd``
catches its own ``FatalProtocolError``/``RequestError`` and reports ``Broken``. Pipe
errors (``trio.BrokenResourceError``, ``trio.ClosedResourceError``) and ``OSError``
from launching a worker or writing to it are caught by ``worker_failures(...)`` (or
``worker_failure`` on the per-request write) below. Either way the connection fails,
every request in flight on it gets a ``WorkerFailure``, and the pool sends those again
and replaces the worker (and, when nothing is left, raises ``PoolExhausted``).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from mcpi_worker.protocol import FatalProtocolError, RequestError


class McpiError(Exception):
    """Base of the errors mcpi reports to users. ``str(error)`` is one line."""


class WorkerFailure(McpiError):
    """One worker stopped being usable: it died, broke the protocol, or hung.

    Delivered to each request that was in flight on that worker. The pool sends the
    request again elsewhere and replaces the worker, so users of the pool see it raised
    only by ``WorkerPool.ping`` after ``max_chunk_attempts`` failed tries; otherwise
    only inside a ``ChunkFailed`` or ``PoolExhausted`` message. ``was_running`` is
    False for a request that was only queued behind the one the worker was computing:
    collateral damage, not a sign that the request is to blame.
    """

    def __init__(self, message: str, *, was_running: bool = True) -> None:
        super().__init__(message)
        self.was_running = was_running


class RequestFailed(McpiError):
    """A request that no worker did or could carry out: a worker answered it with an
    ``error``, or no worker the pool knows of can take it (none offers its kernel or
    accepts its size, or all that do are avoided). ``retryable`` says whether sending it
    again may succeed (``busy``, ``internal``, ``cancelled``) or not (an unknown kernel,
    a chunk larger than the worker accepts, an invalid field; always False for "no
    worker can take it").

    ``WorkerPool.sample`` and ``imap_unordered`` raise it only when it is not
    retryable (retryable ones are sent again and, past ``max_chunk_attempts``, become
    ``ChunkFailed``); ``WorkerPool.ping`` raises any at once."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ChunkFailed(McpiError):
    """One chunk failed on ``max_chunk_attempts`` workers in a row (a poison chunk, or
    a worker command that dies on every request), raised by ``WorkerPool.sample`` and
    ``imap_unordered``'s iterator. The message names the chunk and the last worker's
    failure (its command, exit status and stderr when known)."""


class PoolExhausted(McpiError):
    """Every worker slot was retired (after repeated start-up failures, or by
    ``WorkerPool.retire``); nothing is left to run the work. Raised by entering the
    pool when no worker ever became ready, and from then on by every call that needs a
    worker, and to every request that was waiting. The message names the command, how
    it failed, and its stderr."""


class PoolClosed(McpiError):
    """The pool was used outside its ``async with`` block (before entering it, or once
    it began closing). A request still waiting for a worker when the pool closes, or
    whose worker is stopped before it answers, ends with it too."""


LowLevelError = (FatalProtocolError, RequestError, trio.BrokenResourceError, trio.ClosedResourceError, OSError)
"""What ``worker_failures`` translates: a broken stream, a broken pipe, the OS."""


@contextmanager
def worker_failures(doing: str) -> Iterator[None]:
    """Translate low-level failures while ``doing`` something with a worker into a
    ``WorkerFailure`` with a one-line reason. ``doing`` completes "while ...".

    Cancellation (``trio.Cancelled``) and programming errors pass through untouched.
    """
    try:
        yield
    except LowLevelError as error:
        raise worker_failure(error, doing) from error


def worker_failure(error: BaseException, doing: str) -> WorkerFailure:
    """The ``WorkerFailure`` that ``error`` (one of ``LowLevelError``), met while
    ``doing`` something, stands for. For hot paths where a ``with worker_failures``
    block costs more than the work in it.

    No caller today reaches the ``FatalProtocolError`` and ``RequestError`` branches:
    ``CoordinatorEnd`` turns those into ``Broken`` itself (issue 19 records it)."""
    if isinstance(error, FatalProtocolError):
        return WorkerFailure(f"protocol error while {doing}: {error.code}: {error.message}")
    if isinstance(error, RequestError):
        # A worker's message that frames fine but is invalid (wrong field type, unknown
        # type): the coordinator cannot answer a worker, so the connection is over.
        return WorkerFailure(f"invalid message while {doing}: {error.code}: {error.message}")
    if isinstance(error, trio.BrokenResourceError):
        return WorkerFailure(f"pipe broken while {doing}")
    if isinstance(error, trio.ClosedResourceError):
        return WorkerFailure(f"pipe already closed while {doing}")
    assert isinstance(error, OSError), error
    reason = error.strerror or type(error).__name__
    target = f": {error.filename!r}" if error.filename else ""
    return WorkerFailure(f"{reason}{target} while {doing}")


def describe_exit(returncode: int | None) -> str:
    """``exit code 3``, ``killed by SIGKILL``, or ``still running``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"
