"""When a request is sent again: the one retry rule of ``sample``, ``ping`` and batches.

Every request's outcome goes through ``Attempts.judge``, which says whether it is
final, to be sent again, or out of attempts. ``WorkerPool`` waits on one request at a
time with it (``sample``, ``ping``); a ``Batch`` applies it to each outcome as it is
delivered, with no task per chunk. Only the waiting differs, not the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mcpi_coordinator.errors import ChunkFailed, McpiError, RequestFailed, WorkerFailure
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult


class Verdict(Enum):
    """What ``Attempts.judge`` made of an outcome."""

    FINAL = "final"
    """The outcome is the request's: a result, a pong, or an error no retry can mend."""
    AGAIN = "again"
    """A failure it may not have caused, or attempts are left: send it again."""
    SPENT = "spent"
    """It failed on ``limit`` workers in a row: give up (``Attempts.failed``)."""


@dataclass(slots=True)
class Attempts:
    """The failures charged to one chunk (or ping) so far.

    Only a failure the chunk may have caused counts: a worker that refused it with a
    retryable error, or died *while computing it*, or broke by refusing it for good
    (the core charges that as computing it: ``CoordinatorEnd``), so a chunk every
    worker refuses runs out of attempts. A chunk merely queued behind the
    one that broke its worker is collateral damage and costs nothing, or a worker
    that dies on every Nth request would make innocent chunks look poisonous.
    A ping costs its worker nothing, so each of its workers that fails counts, and a
    worker's refusal of a ping is final.
    """

    chunk: Chunk | None
    """None: a ping."""
    limit: int
    """Out of attempts once this many workers in a row failed on it."""
    charged: int = 0
    tried: bool = False
    """Sent at least once and failed: a retry goes ahead of fresh work (``dispatch``)."""

    def judge(self, outcome: ChunkResult | McpiError | None) -> Verdict:
        """Charge ``outcome`` against the request if it is a failure, and say what comes
        next. A ``PoolClosed``/``PoolExhausted``, and a ``RequestFailed`` that is not
        retryable (no worker offers its kernel, a seed out of range), are final. Never
        raises."""
        if not isinstance(outcome, McpiError):
            return Verdict.FINAL
        if isinstance(outcome, WorkerFailure):
            self.charged += 1 if self.chunk is None else outcome.was_running
        elif isinstance(outcome, RequestFailed) and outcome.retryable and self.chunk is not None:
            self.charged += 1
        else:
            return Verdict.FINAL
        self.tried = True
        return Verdict.AGAIN if self.charged < self.limit else Verdict.SPENT

    def failed(self, last: str) -> ChunkFailed:
        """The ``ChunkFailed`` of a chunk out of attempts, ``last`` saying why its last
        worker failed."""
        chunk = self.chunk
        assert chunk is not None, "a ping out of attempts raises its last failure"
        return ChunkFailed(
            f"chunk {chunk.stream} of seed {chunk.seed} failed on {self.charged} workers "
            f"in a row; last: {last}"
        )
