"""Units of work, their results, and how many failures one chunk may cost.

Shared by the pool's one-chunk ``sample`` and its batches (``mcpi_coordinator.pool.batch``),
so both retry by the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcpi_coordinator.errors import ChunkFailed, RequestFailed, WorkerFailure
from mcpi_worker.kernels import DEFAULT_KERNEL


@dataclass(frozen=True, slots=True)
class Chunk:
    """One unit of work: count ``points`` of stream ``stream`` of ``seed`` with ``kernel``."""

    seed: int
    stream: int
    points: int
    kernel: str = DEFAULT_KERNEL


@dataclass(frozen=True, slots=True)
class ChunkResult:
    chunk: Chunk
    inside: int
    elapsed_s: float
    """The worker's own measure of the time it spent computing the chunk."""
    slot: int
    pid: int
    host: str | None = None
    """The host the worker said it runs on (its ``welcome``)."""


@dataclass(slots=True)
class Attempts:
    """The failures charged to one chunk so far.

    Only a failure the chunk may have caused counts: a worker that refused it with a
    retryable error, or died *while computing it*. A chunk merely queued behind the
    one that broke its worker is collateral damage and costs nothing, or a worker
    that dies on every Nth request would make innocent chunks look poisonous.
    """

    chunk: Chunk
    limit: int
    """``ChunkFailed`` once this many workers in a row failed on the chunk."""
    charged: int = 0
    tried: bool = False
    """Sent at least once and failed: a retry goes ahead of fresh work (``dispatch``)."""

    def charge(self, error: RequestFailed | WorkerFailure) -> bool:
        """Count ``error`` against the chunk; True while it may be sent again.

        Re-raises a ``RequestFailed`` that no retry can mend (an unknown kernel)."""
        self.tried = True
        if isinstance(error, RequestFailed):
            if not error.retryable:
                raise error
            self.charged += 1
        else:
            self.charged += error.was_running
        return self.charged < self.limit

    def failed(self, last: str) -> ChunkFailed:
        chunk = self.chunk
        return ChunkFailed(
            f"chunk {chunk.stream} of seed {chunk.seed} failed on {self.charged} workers "
            f"in a row; last: {last}"
        )
