"""The one retry rule (``pool.retry.Attempts.judge``) that ``sample``, ``ping`` and batches
share: what each outcome costs a chunk or a ping, and what comes next."""

from __future__ import annotations

import pytest

from mcpi_coordinator.errors import ChunkFailed, McpiError, PoolClosed, PoolExhausted, RequestFailed, WorkerFailure
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.pool.retry import Attempts, Verdict

CHUNK = Chunk(seed=7, stream=3, points=100)
RESULT = ChunkResult(CHUNK, 78, 0.1, 0, 1234)

DIED_ON_IT = WorkerFailure("exited (exit code 9)", was_running=True)
DIED_BEHIND_IT = WorkerFailure("exited (exit code 9)", was_running=False)
BUSY = RequestFailed("worker 0 refused the request: busy: try later", retryable=True)
REFUSED = RequestFailed("worker 0 refused the request: invalid_request: seed", retryable=False)


@pytest.mark.parametrize("outcome", [RESULT, PoolClosed("closed"), PoolExhausted("gone"), REFUSED])
def test_a_result_and_what_no_retry_mends_are_final_and_cost_nothing(outcome: ChunkResult | McpiError) -> None:
    attempts = Attempts(CHUNK, limit=2)
    assert attempts.judge(outcome) is Verdict.FINAL
    assert (attempts.charged, attempts.tried) == (0, False)


def test_a_chunk_is_charged_only_for_failures_it_may_have_caused() -> None:
    attempts = Attempts(CHUNK, limit=2)
    for _ in range(5):  # queued behind the request that broke its worker: collateral damage
        assert attempts.judge(DIED_BEHIND_IT) is Verdict.AGAIN
    assert (attempts.charged, attempts.tried) == (0, True)  # but it goes first in line now
    assert attempts.judge(BUSY) is Verdict.AGAIN
    assert attempts.judge(DIED_ON_IT) is Verdict.SPENT
    failed = attempts.failed("worker 1 (pid 9): exited (exit code 9)")
    assert isinstance(failed, ChunkFailed)
    assert str(failed) == "chunk 3 of seed 7 failed on 2 workers in a row; last: worker 1 (pid 9): exited (exit code 9)"


def test_a_ping_is_charged_for_every_worker_lost_and_a_refusal_is_final() -> None:
    ping = Attempts(None, limit=2)
    assert ping.judge(None) is Verdict.FINAL  # its pong
    assert ping.judge(BUSY) is Verdict.FINAL  # a worker answering a ping with an error: raised at once
    assert ping.judge(DIED_BEHIND_IT) is Verdict.AGAIN
    assert ping.judge(DIED_BEHIND_IT) is Verdict.SPENT  # its last failure is raised as it is
    assert ping.charged == 2
