"""A worker refusing for good what its welcome admits, against the pool: in-process fakes
(``FakeBehaviour(internal_errors=N, error_code=CODE)``) injected through the launcher.

Every sample the pool sends was checked against the worker's welcome (the protocol
core's ``CoordinatorEnd``), so a per-request error that is not retryable (a code of §8,
or one no version has) means the worker contradicts its welcome: the core breaks the
connection, and the pool replaces the worker and sends its requests elsewhere, as for any
broken worker. The run goes on with the same counts, every chunk delivered once; a chunk
that every worker refuses ends the call with one error naming the code, never a loop.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
from structlog.testing import capture_logs

from mcpi_coordinator.errors import ChunkFailed, PoolExhausted
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import by_slot, fake_launcher
from mcpi_worker.kernels import count_numpy
from mcpi_worker.protocol import Sample

SEED = 77
POINTS = 2000
CODES = ["quantum_flux", "unknown_kernel", "invalid_request", "duplicate_id", "handshake_required", "unknown_type"]


def refusing(code: str) -> FakeBehaviour:
    """A worker refusing every sample it starts with ``code``, several in flight at once
    (the ones it only queued are collateral when it is given up on)."""
    return FakeBehaviour(internal_errors=1 << 30, error_code=code, slow=0.5, max_inflight=4)


@pytest.mark.parametrize("code", CODES)
async def test_one_worker_refusing_for_good_is_replaced_and_every_chunk_is_counted_once(
    code: str, autojump_clock: object
) -> None:
    work = [Chunk(SEED, stream, POINTS) for stream in range(24)] + [Chunk(SEED, 24, POINTS, streams=40)]
    counted: Counter[int] = Counter()
    with capture_logs() as logs, trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, by_slot({0: refusing(code)}, launches=1))
            async with WorkerPool(3, launcher=launcher, backoff_s=0.0, pipeline_depth=4) as pool:
                async with pool.imap_unordered(work) as results:
                    async for result in results:
                        chunk = result.chunk
                        streams = range(chunk.stream, chunk.stream + chunk.streams)
                        counted.update(streams)
                        assert result.inside == sum(count_numpy(SEED, s, POINTS) for s in streams)
                        assert result.slot != 0 or result.pid != launcher.launches_for(0)[0].pid
                while pool.stats.restarts < 1:  # the replacement may start after the last result
                    await trio.sleep(0.01)
                stats = pool.stats
                assert (stats.restarts, stats.in_flight, stats.retired) == (1, 0, 0)
    assert counted == Counter(range(64))  # every stream once: none lost, none twice
    [failed] = [entry for entry in logs if entry["event"] == "worker_failed"]
    assert failed["slot"] == 0 and f"{code}: fake internal error" in failed["reason"], failed


async def test_sample_sends_a_refused_chunk_to_another_worker(autojump_clock: object) -> None:
    """``WorkerPool.sample`` (the embedding API) as the batch: the refusal used to be raised
    as ``RequestFailed(retryable=False)``."""
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, by_slot({0: refusing("unknown_kernel")}, launches=1))
            async with WorkerPool(1, launcher=launcher, backoff_s=0.0) as pool:
                result = await pool.sample(Chunk(SEED, 3, POINTS))
                assert result.inside == count_numpy(SEED, 3, POINTS)
                assert pool.stats.restarts == 1


@pytest.mark.parametrize("size", [1, 3])
async def test_a_chunk_every_worker_refuses_ends_the_call_once_naming_the_code(
    size: int, autojump_clock: object
) -> None:
    """Every worker refuses (as if our own requests were wrong): each refusal costs a
    worker; the call ends with one error naming the code once the chunk's attempts or the
    slots' restarts run out, with nothing left in flight and no worker still running."""
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            every_slot = by_slot(dict.fromkeys(range(size), refusing("quantum_flux")), launches=None)
            launcher = fake_launcher(nursery, every_slot)
            async with WorkerPool(size, launcher=launcher, backoff_s=0.0) as pool:
                with pytest.raises((ChunkFailed, PoolExhausted)) as ended:
                    async with pool.imap_unordered([Chunk(SEED, s, POINTS) for s in range(6)]) as results:
                        async for _ in results:
                            pytest.fail("a refused chunk was counted")
                assert pool.stats.in_flight == 0 and pool.stats.completed == 0
            launched = [process for slot in range(size) for process in launcher.launches_for(slot)]
    assert "quantum_flux: fake internal error" in str(ended.value) and "\n" not in str(ended.value)
    assert len(launched) <= 3 * size  # a slot retires after 3 failures before any work
    assert all(process.returncode is not None for process in launched)


async def test_a_slot_whose_every_worker_refuses_retires_and_the_run_goes_on(autojump_clock: object) -> None:
    """Worker 0 refuses every time it is started, beside an honest worker slow enough that
    the refused chunks wait in line while worker 0 is replaced: each replacement takes a
    retried chunk first and refuses it too. The slot retires after its failed starts
    (``max_start_attempts``, 3) before any chunk runs out of its attempts (5): one
    hostile slot never ends the run, and every chunk is counted once, by the honest one."""
    work = [Chunk(SEED, stream, POINTS) for stream in range(8)]
    counted: Counter[int] = Counter()
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            behaviours = by_slot({0: refusing("unknown_kernel")}, launches=None, then=FakeBehaviour(slow=10.0))
            launcher = fake_launcher(nursery, behaviours)
            async with WorkerPool(2, launcher=launcher, backoff_s=0.2, max_start_attempts=3) as pool:
                async with pool.imap_unordered(work) as results:
                    async for result in results:
                        assert result.slot == 1 and result.inside == count_numpy(SEED, result.chunk.stream, POINTS)
                        counted[result.chunk.stream] += 1
                assert [worker.state for worker in pool.stats.workers] == ["retired", "ready"]
            refused = sum(len(process.stats.errors_sent) for process in launcher.launches_for(0))
    assert counted == Counter(range(8))
    assert len(launcher.launches_for(0)) == 3 and refused >= 3
    sent = [{m.stream for m in p.stats.received if isinstance(m, Sample)} for p in launcher.launches_for(0)]
    assert set.intersection(*sent), sent  # a retried chunk went to each replacement first, and was refused
