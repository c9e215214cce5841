"""What the pool says about itself: the states of its slots and the snapshots
``WorkerPool.stats`` returns.

The states are ``str``-valued enums: ``mcpi estimate --json`` writes them as they are
(``"ready"``, ``"retired"``), and a ``WorkerStats`` compares equal to the word."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class SlotState(StrEnum):
    """Where a slot is in its worker's life (``WorkerStats.state``)."""

    QUEUED = "queued"
    """Waiting for its turn to start (``max_starting`` workers are starting already)."""
    STARTING = "starting"
    """Its worker is launched, or being launched, and has not sent its welcome yet."""
    READY = "ready"
    """Its worker is welcomed and takes work."""
    RESTARTING = "restarting"
    """Its worker failed: being stopped, or the slot is backing off before the next."""
    STOPPING = "stopping"
    """The pool is closing: its worker is being stopped."""
    RETIRED = "retired"
    """For good: failed starts in a row, or ``WorkerPool.retire``."""
    STOPPED = "stopped"
    """The pool closed and its worker, if it had one, is reaped."""


class PoolState(StrEnum):
    """A pool's life: ``NEW`` → ``OPEN`` (entered) → ``CLOSING`` → ``CLOSED``. Its
    ``repr`` and the ``PoolClosed`` message name it."""

    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One slot: its current worker (if any) and totals over all its workers."""

    slot: int
    state: SlotState
    """Where its worker's life is (``SlotState``)."""
    pid: int | None
    """The running worker's pid; None between workers."""
    host: str | None
    """The host its latest welcomed worker said it runs on; None before any welcome."""
    chunks: int
    """Chunks its workers counted (a range counts one per stream)."""
    points: int
    """Points its workers counted."""
    busy_s: float
    """Seconds the slot's workers spent computing, by their own measure."""
    restarts: int
    """Workers started in this slot to replace one that failed."""
    jobs: int = 1
    """Samples its worker computes at once, as its last welcome said."""
    implementations: dict[str, str] = field(default_factory=dict)
    """Kernel -> the implementation its worker said runs it, by its welcome and then by
    its latest result (``numba-fused`` or ``numpy`` for the numpy kernel)."""
    attempt: int = 1
    """Which start this is of the slot's current worker: 1, or one more per start that
    failed before doing any work (the slot retires after ``max_start_attempts``)."""
    state_s: float = 0.0
    """Seconds the slot has been in ``state`` (how long a worker has been starting, say)."""
    failed: int = 0
    """Workers of this slot the pool gave up on (``PoolStats.failures`` says why)."""


@dataclass(frozen=True, slots=True)
class FailedWorker:
    """A worker the pool gave up on: it died, broke the protocol, stalled, was retired, or
    never got as far as its welcome. Every one is in ``PoolStats.failures`` and was
    logged as one warning line (``worker_failed``, or ``worker_retired`` for a slot
    retired by ``WorkerPool.retire``), unless it is one of several failed starts on one
    host, which that host's first warning stands for."""

    slot: int
    pid: int | None
    """None when it could not even be started."""
    host: str | None
    reason: str
    welcomed: bool
    """It had answered the handshake (it failed at work, not at its start)."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """The pool at one moment (``WorkerPool.stats``)."""

    size: int
    """Slots, as the pool was made."""
    alive: int
    """Slots whose worker is ``ready`` (welcomed and taking work)."""
    in_flight: int
    """Requests sent to workers and not yet answered (pings and cancelled ones too)."""
    completed: int
    """Chunks counted so far; a range counts one per stream."""
    restarts: int
    """Workers started to replace one that failed, over all slots."""
    retired: int
    """Slots retired for good (failed starts in a row, or ``WorkerPool.retire``)."""
    workers: tuple[WorkerStats, ...]
    """One per slot, in slot order."""
    failures: tuple[FailedWorker, ...] = ()
    """Every worker given up on, in order (``FailedWorker``)."""
