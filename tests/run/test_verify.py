"""``--verify``: workers that are wrong once, always, or for some streams, against verify 0,
0.1 and 1 (in-process fakes: their counts are the real kernel's, plus the lie), and the
rule that picks the chunks to check. The real command is in test_cli_verify.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.pool.worker_pool import WorkerPool, WorkerStats
from mcpi_coordinator.run.checkpoint import Checkpoint, RunParameters
from mcpi_coordinator.run.estimate import EstimateResult, consecutive_runs, run_estimate
from mcpi_coordinator.run.prefix import reference_prefix
from mcpi_coordinator.run.verify import COORDINATOR, Source, VerificationFailed, Verifier, avoid_choices, selected
from mcpi_coordinator.testing import FakeBehaviour
from mcpi_coordinator.testing.inprocess import FakeLauncher, by_slot, fake_launcher
from mcpi_worker.kernels import KERNELS

POINTS, CHUNK, SEED = 3_000_000, 10_000, 5  # 300 chunks
EXPECTED = reference_prefix(SEED, POINTS, CHUNK)

# ---------------------------------------------------------------------- choosing


def test_the_chunks_to_check_are_a_seeded_choice_of_the_asked_fraction() -> None:
    streams = range(20_000)
    tenth = [s for s in streams if selected(SEED, s, 0.1)]
    assert 0.09 < len(tenth) / len(streams) < 0.11
    assert tenth == [s for s in streams if selected(SEED, s, 0.1)]  # the same run, the same chunks
    assert tenth != [s for s in streams if selected(SEED + 1, s, 0.1)]
    assert set(tenth) <= {s for s in streams if selected(SEED, s, 0.5)}  # nested: a larger fraction adds
    assert all(selected(SEED, s, 1.0) for s in streams)
    assert not any(selected(SEED, s, 0.0) for s in streams)


def worker(slot: int, host: str, state: str = "ready") -> WorkerStats:
    return WorkerStats(
        slot=slot, state=state, pid=100 + slot, host=host, chunks=0, points=0, busy_s=0.0, restarts=0
    )


def test_a_second_count_goes_to_another_host_first_then_another_worker_then_the_coordinator() -> None:
    fleet = [worker(0, "a"), worker(1, "a"), worker(2, "b"), worker(3, "b", state="retired")]
    first = Source(0, 100, "a")
    assert avoid_choices(fleet, [first]) == [frozenset({0, 1, 3}), frozenset({0})]
    assert avoid_choices(fleet, [first, Source(2, 102, "b")]) == [frozenset({0, 2})]  # no third host
    assert avoid_choices(fleet, [first, Source(1, 101, "a")], condemned=[2]) == []  # the coordinator
    assert avoid_choices(fleet, [first, COORDINATOR]) == [frozenset({0, 1, 3}), frozenset({0})]


# ---------------------------------------------------------------------- wrong workers

ONCE = FakeBehaviour(wrong_count=1, wrong_count_times=1)
ALWAYS = FakeBehaviour(wrong_count=1)
SOME = FakeBehaviour(wrong_count=3, wrong_count_streams=tuple(range(0, 300, 7)))
LIARS = {"wrong once": ONCE, "wrong always": ALWAYS, "wrong for some streams": SOME}


async def count_inline(chunk: Chunk) -> int:
    """The coordinator's own count, without the thread ``count_here`` uses: under the
    autojump clock, a task waiting on a thread looks idle, and the clock jumped to the
    test's 600 s deadline while the coordinator counted."""
    return KERNELS[chunk.kernel](chunk.seed, chunk.stream, chunk.points, lambda: False)


async def estimate(
    behaviours: dict[int, FakeBehaviour], workers: int = 3, chunk_size: int = CHUNK, **options: Any
) -> tuple[EstimateResult, FakeLauncher, list[dict[str, Any]]]:
    outcome: EstimateResult | McpiError
    with capture_logs() as logs, trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            launcher = fake_launcher(nursery, by_slot(behaviours, then=FakeBehaviour(slow=0.01)))
            async with WorkerPool(workers, launcher=launcher) as pool:
                try:
                    outcome = await run_estimate(
                        pool, points=POINTS, seed=SEED, chunk_size=chunk_size, count_locally=count_inline, **options
                    )
                except McpiError as error:
                    outcome = error
    if isinstance(outcome, McpiError):
        raise outcome
    return outcome, launcher, logs


def liar_pid(launcher: FakeLauncher) -> int:
    return launcher.launches_for(0)[0].pid


def retired_warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "worker_retired" and e["log_level"] == "warning"]


@pytest.mark.slow
@pytest.mark.parametrize("liar", list(LIARS))
async def test_verify_1_gives_the_exact_count_and_retires_the_wrong_worker(
    liar: str, autojump_clock: object
) -> None:
    behaviour = dataclasses.replace(LIARS[liar], slow=0.01)
    result, launcher, logs = await estimate({0: behaviour}, verify=1.0)
    assert (result.inside, result.points) == (EXPECTED.inside, POINTS)
    stats = result.verification
    assert stats is not None and stats.verified_chunks == POINTS // CHUNK and stats.mismatches >= 1
    assert [(w.slot, w.pid) for w in stats.retired] == [(0, liar_pid(launcher))]
    assert stats.recomputed_chunks == 0  # nothing was taken on trust
    (warning,) = retired_warnings(logs)  # one warning, naming its host and pid
    assert warning["slot"] == 0 and f"pid {liar_pid(launcher)}" in warning["reason"]
    assert f"host {stats.retired[0].host}" in warning["reason"]
    assert len(launcher.launches_for(0)) == 1  # retired, not replaced


async def test_verify_0_takes_a_wrong_count_on_trust(autojump_clock: object) -> None:
    result, _, logs = await estimate({0: FakeBehaviour(wrong_count=1, slow=0.01)})
    assert result.inside != EXPECTED.inside and result.verification is None
    assert retired_warnings(logs) == []


async def test_verify_a_tenth_catches_a_worker_that_is_always_wrong_and_recomputes_its_chunks(
    autojump_clock: object,
) -> None:
    result, launcher, logs = await estimate({0: FakeBehaviour(wrong_count=1, slow=0.01)}, verify=0.1)
    assert result.inside == EXPECTED.inside
    stats = result.verification
    assert stats is not None and [w.pid for w in stats.retired] == [liar_pid(launcher)]
    assert stats.recomputed_chunks > 0  # what it had said before it was caught, taken on trust, redone
    assert 0 < stats.verified_chunks < POINTS // CHUNK
    assert len(retired_warnings(logs)) == 1


async def test_verify_a_tenth_catches_a_worker_wrong_for_some_streams_when_one_is_checked(
    autojump_clock: object,
) -> None:
    # Every stream is wrong on slot 0 from the first checked one on: whichever of them
    # it computes, the first checked one catches it.
    wrong = tuple(s for s in range(300) if selected(SEED, s, 0.1) or s % 5 == 0)
    liar = FakeBehaviour(wrong_count=2, wrong_count_streams=wrong, slow=0.01)
    result, launcher, _ = await estimate({0: liar}, verify=0.1)
    assert result.inside == EXPECTED.inside and result.verification is not None
    assert [w.pid for w in result.verification.retired] == [liar_pid(launcher)]


async def test_verify_a_tenth_may_miss_a_worker_wrong_once_and_says_what_it_checked(
    autojump_clock: object,
) -> None:
    once = FakeBehaviour(wrong_count=1, wrong_count_times=1, slow=0.01)
    result, _, _ = await estimate({0: once}, verify=0.1)
    stats = result.verification
    assert stats is not None
    if stats.retired:  # its one wrong chunk was among those checked
        assert result.inside == EXPECTED.inside
    else:
        assert abs(result.inside - EXPECTED.inside) == 1 and stats.mismatches == 0


async def test_with_two_workers_the_coordinator_breaks_the_tie_and_then_checks_alone(
    autojump_clock: object,
) -> None:
    result, launcher, _ = await estimate({0: FakeBehaviour(wrong_count=1, slow=0.01)}, workers=2, verify=1.0)
    assert result.inside == EXPECTED.inside
    stats = result.verification
    assert stats is not None and [w.pid for w in stats.retired] == [liar_pid(launcher)]
    assert stats.local_checks > 0  # the one worker left is checked by the coordinator itself


async def test_a_single_wrong_worker_against_the_coordinator_is_a_clear_failure(
    autojump_clock: object,
) -> None:
    both = r"worker 0 \(host .*, pid \d+\) counted \d+, the coordinator .* no other worker is left"
    with pytest.raises(VerificationFailed, match=both):
        await estimate({0: FakeBehaviour(wrong_count=1)}, workers=1, verify=1.0)


async def test_an_early_stop_with_a_wrong_worker_stops_where_an_honest_run_does(
    autojump_clock: object,
) -> None:
    eps = 5e-3
    reference = reference_prefix(SEED, POINTS, CHUNK, target_error=eps)
    result, _, _ = await estimate({0: FakeBehaviour(wrong_count=40, slow=0.01)}, verify=0.1, target_error=eps)
    assert (result.chunks, result.inside) == (reference.k, reference.inside)


async def test_chunks_of_a_caught_worker_leave_the_checkpoint_too(
    tmp_path: Any, autojump_clock: object
) -> None:
    path = tmp_path / "run.db"
    with Checkpoint.create(path, RunParameters(SEED, POINTS, CHUNK, "numpy", None)) as checkpoint:
        liar = FakeBehaviour(wrong_count=1, slow=0.01)
        result, _, _ = await estimate({0: liar}, verify=0.1, checkpoint=checkpoint)
    assert result.inside == EXPECTED.inside and result.verification is not None
    assert result.verification.recomputed_chunks > 0
    with Checkpoint.resume(path) as again:
        assert sorted(again.stored()) == [(s, EXPECTED.counted()[1][s]) for s in range(POINTS // CHUNK)]


# ---------------------------------------------------------------------- the requests


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 1.0])
def test_a_verified_run_sends_each_checked_chunk_alone_and_the_others_as_ranges(fraction: float) -> None:
    """One request a chunk made a verified run ~3x slower with numba's loops, which count a
    range's streams side by side. ``Verifier.cut`` covers the range exactly once, in order:
    a checked stream alone, the streams between checked ones as one range each."""
    verifier = Verifier(None, SEED, fraction, None, settle=print, forget=print)  # type: ignore[arg-type]
    verifier.pending.add(42)  # being checked already: not sent again
    whole = Chunk(SEED, 0, CHUNK, streams=300)
    pieces = list(verifier.cut(whole))
    sent = [s for piece in pieces for s in range(piece.stream, piece.stream + piece.streams)]
    checked = {s for s in range(300) if selected(SEED, s, fraction)}
    assert sent == [s for s in range(300) if not (s == 42 and s in checked)]
    for piece in pieces:
        assert (piece.seed, piece.points, piece.kernel) == (whole.seed, whole.points, whole.kernel)
        streams = set(range(piece.stream, piece.stream + piece.streams))
        assert piece.streams == 1 if streams & checked else not streams & checked
    unchecked_runs = sum(1 for s in range(300) if s not in checked and (s == 0 or s - 1 in checked))
    assert len(pieces) == len(checked - {42}) + unchecked_runs


async def test_a_verified_run_s_unchecked_chunks_arrive_as_ranges(autojump_clock: object) -> None:
    """Through the pool: the results of a run checking a tenth include ranges (several
    streams in one result), and the count is the run's."""
    streams_per_result: list[int] = []
    result, _, _ = await estimate(
        {}, verify=0.1, on_chunk=lambda chunk_result, _prefix: streams_per_result.append(chunk_result.chunk.streams)
    )
    assert result.inside == EXPECTED.inside
    assert max(streams_per_result) > 1
    assert len(streams_per_result) < POINTS // CHUNK


def test_consecutive_runs_cuts_sorted_streams_where_they_skip_and_at_the_longest() -> None:
    assert list(consecutive_runs([], 4)) == []
    assert list(consecutive_runs([3], 4)) == [range(3, 4)]
    assert list(consecutive_runs([1, 2, 3, 5, 6, 9], 4)) == [range(1, 4), range(5, 7), range(9, 10)]
    assert list(consecutive_runs(list(range(10)), 4)) == [range(4), range(4, 8), range(8, 10)]


async def test_a_caught_worker_s_trusted_chunks_are_counted_again_as_ranges(autojump_clock: object) -> None:
    """The chunks a condemned worker had counted on trust were sent again one request
    each, though it had counted them in ranges. A run of 3,000 chunks, and a worker
    honest up to chunk 100 and wrong from there on: it is caught with ranges counted on
    trust while chunks are still being handed out, and those come back in fewer requests
    than chunks; the count is the run's."""
    chunk_size = POINTS // 3000
    liar = FakeBehaviour(wrong_count=1, wrong_count_streams=tuple(range(100, 3000)), slow=0.01)
    results: list[ChunkResult] = []
    result, launcher, _ = await estimate(
        {0: liar},
        chunk_size=chunk_size,
        verify=0.1,
        on_chunk=lambda chunk_result, _prefix: results.append(chunk_result),
    )
    assert result.inside == reference_prefix(SEED, POINTS, chunk_size).inside
    assert result.verification is not None
    assert [w.pid for w in result.verification.retired] == [liar_pid(launcher)]
    liar_streams = {
        stream
        for chunk_result in results
        if chunk_result.pid == liar_pid(launcher)
        for stream in range(chunk_result.chunk.stream, chunk_result.chunk.stream + chunk_result.chunk.streams)
    }
    # The others' requests made only of streams the liar had counted: what was counted again.
    again = [
        r.chunk
        for r in results
        if r.pid != liar_pid(launcher)
        and set(range(r.chunk.stream, r.chunk.stream + r.chunk.streams)) <= liar_streams
    ]
    assert sum(chunk.streams for chunk in again) >= result.verification.recomputed_chunks > 0
    assert len(again) < sum(chunk.streams for chunk in again)  # fewer requests than chunks: ranges
