"""mcpi's own errors: everything a user of the pool or the command may see.

Each is an ``McpiError`` whose ``str()`` is one line fit to print after ``mcpi: error:``.
Every layer raises them, so this module imports nothing of mcpi's, nor Trio.

Low-level failures never leave the pool. A worker's bytes that do not parse or break a
rule never raise: the protocol core's ``CoordinatorEnd`` catches its own
``FatalProtocolError``/``RequestError`` and reports ``Broken``. Pipe errors and
``OSError`` from launching a worker, writing to it or reading from it become a
``WorkerFailure`` in one place, ``connection.failures``. Either way the connection
fails, every request in flight on it gets a ``WorkerFailure``, and the pool sends those
again and replaces the worker (and, when nothing is left, raises ``PoolExhausted``).
"""

from __future__ import annotations


class McpiError(Exception):
    """Base of the errors mcpi reports to users. ``str(error)`` is one line."""


class WorkerFailure(McpiError):
    """One worker stopped being usable: it died, broke the protocol (refusing for good a
    request its welcome admits included), or hung.

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
    """A request that no worker did or could carry out: a worker answered it with a
    retryable ``error`` (``busy``, ``internal``, ``cancelled``: ``retryable`` True), or no
    worker the pool knows of can take it (none offers its kernel or accepts its size, or
    all that do are avoided; ``retryable`` False), or its fields are out of range
    (``InvalidChunk``). A worker's ``error`` that is not retryable never becomes one: the
    pool sends only what the worker's welcome admits, so such a refusal breaks the
    worker (a ``WorkerFailure``) and the request goes elsewhere.

    ``WorkerPool.sample`` and ``imap_unordered`` raise it only when it is not
    retryable (retryable ones are sent again and, past ``max_chunk_attempts``, become
    ``ChunkFailed``); ``WorkerPool.ping`` raises any at once."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class InvalidChunk(RequestFailed, ValueError):
    """A ``Chunk`` that no request can carry: a ``seed``, ``stream`` or ``points`` outside
    the protocol's range, ``streams`` below 1 or going past stream 2**64 - 1, a kernel
    name too long (protocol.md §4). Raised where the chunk is made; never retryable. A
    ``RequestFailed`` (what sending it would have ended in) and a ``ValueError``."""


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


class CheckpointRefused(McpiError):
    """A checkpoint that cannot be used as asked; ``str()`` is one line naming the file.

    Raised by ``run.checkpoint``; defined here so that ``mcpi estimate`` can catch it
    without importing that module (and sqlite3) on a run without a checkpoint."""
