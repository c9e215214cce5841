"""``pool.batch``: many chunks through the dispatcher with no task per chunk, driven by hand.

A real ``Dispatcher`` and ``FakeConnection``s (no process, no pipes): the test makes the
workers answer, refuse or break, and reads what the batch's consumer gets.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
from fake_connection import FakeConnection, record

from mcpi_coordinator.errors import ChunkFailed, McpiError, RequestFailed
from mcpi_coordinator.pool.batch import Batch
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.dispatch import Connection, Dispatcher
from mcpi_worker import protocol

SEED = 5


async def why_it_ended(connection: Connection, error: McpiError) -> str:
    return f"worker {connection.slot}'s whole story ({error})"


class Taken:
    """An iterator of one-stream chunks that counts how many were taken from it."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.taken = 0

    def __iter__(self) -> Iterator[Chunk]:
        for stream in range(self.count):
            self.taken += 1
            yield Chunk(SEED, stream, 10)


def batch_of(chunks: Iterator[Chunk], dispatcher: Dispatcher, *, window: int = 4, attempts: int = 2) -> Batch:
    return Batch(chunks, window, dispatcher, why_it_ended=why_it_ended, max_chunk_attempts=attempts)


def started(chunks: Iterator[Chunk], *, depth: int, window: int = 4) -> tuple[Dispatcher, FakeConnection, Batch]:
    """A dispatcher with one worker of ``depth`` lanes, and a batch of ``chunks`` started on it."""
    dispatcher = Dispatcher(record)
    worker = FakeConnection(0)
    dispatcher.add_worker(worker, depth=depth)
    batch = batch_of(chunks, dispatcher, window=window)
    batch.start()
    return dispatcher, worker, batch


async def test_chunks_are_taken_only_as_room_frees_up() -> None:
    source = Taken(100)
    dispatcher, worker, batch = started(iter(source), depth=1, window=3)
    assert (source.taken, worker.in_flight) == (3, 1)  # the window: one sent, two in line
    worker.answer_all(dispatcher)
    assert source.taken == 3  # the consumer has not taken its result yet
    result = await batch.__anext__()
    assert result.chunk.stream == 0 and source.taken == 4
    batch.close()


async def test_a_failed_chunk_goes_first_in_line_and_a_poison_chunk_ends_with_its_workers_story() -> None:
    dispatcher = Dispatcher(record, slots=1)
    first = FakeConnection(0)
    dispatcher.add_worker(first, depth=2)
    batch = batch_of(iter(Taken(3)), dispatcher, window=3, attempts=2)
    batch.start()
    first.break_down(dispatcher)  # stream 0 was running on it, stream 1 queued behind it
    second = FakeConnection(0)
    dispatcher.add_worker(second, depth=3)
    # The two failed chunks are retries: they go ahead of stream 2, which waited fresh.
    assert [(token.chunk.stream, token.retried) for _, token in second.sent] == [(0, True), (1, True), (2, False)]
    second.break_down(dispatcher)  # stream 0 fails on a second worker in a row: poison
    with pytest.raises(ChunkFailed) as failed:
        with trio.fail_after(5):
            await batch.__anext__()
    assert str(failed.value) == (
        "chunk 0 of seed 5 failed on 2 workers in a row; "
        "last: worker 0's whole story (exited (exit code 9))"
    )


async def test_a_refusal_for_good_is_raised_and_the_rest_cancelled() -> None:
    dispatcher, worker, batch = started(iter(Taken(2)), depth=2)
    request_ids = [i for i, _ in worker.sent]
    refusal = protocol.Error(request_ids[0], "invalid_request", "no")
    events: list[protocol.CoordinatorEvent] = [protocol.Answered(request_ids[0], refusal, worker.sent[0][1], False)]
    dispatcher.on_events(worker, events)
    with pytest.raises(RequestFailed, match="invalid_request: no"):
        await batch.__anext__()
    assert worker.cancelled == [request_ids[1]]  # closed: what was still in flight is abandoned
    with pytest.raises(StopAsyncIteration), trio.fail_after(5):
        await batch.__anext__()  # asked again: it has ended


async def test_closing_a_batch_drops_the_outcomes_still_to_come_and_ends_its_iteration() -> None:
    """Iterating a closed batch (say, again after it raised) used to wait forever for
    outcomes that ``close`` had dropped."""
    source = Taken(10)
    dispatcher, worker, batch = started(iter(source), depth=2, window=4)
    batch.close()
    assert worker.cancelled == [i for i, _ in worker.sent] and len(worker.cancelled) == 2
    worker.answer_all(dispatcher)
    with trio.fail_after(5):
        assert [result async for result in batch] == []
    assert source.taken == 4


class _Steps(trio.abc.Instrument):
    """Counts the scheduler steps of one task (a schedule point costs one)."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += task is self.task


async def test_the_answers_of_one_read_are_handed_out_with_one_schedule_point() -> None:
    """Counted, not timed: the results one read brought go to the consumer with one
    scheduler pass in all, where each used to take one of its own."""
    dispatcher, worker, batch = started(iter(Taken(8)), depth=8, window=8)
    worker.answer_all(dispatcher)  # eight answers, as one read of stdout brings them
    steps = _Steps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    try:
        with trio.fail_after(5):
            streams = [(await batch.__anext__()).chunk.stream for _ in range(8)]
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert sorted(streams) == list(range(8))
    assert steps.steps == 1
    batch.close()


async def test_a_burst_is_still_cancelled_at_every_result_and_ends_each_chunk_once() -> None:
    """Without a schedule point per result, each result is still a cancel point, and a
    refusal in the middle of one read's answers is raised in its place: every chunk of
    the read ends exactly once (a result, or the error)."""
    dispatcher, worker, batch = started(iter(Taken(6)), depth=6, window=6)
    sent = list(worker.sent)
    events: list[protocol.CoordinatorEvent] = []
    for position, (request_id, token) in enumerate(sent):
        answer: protocol.Result | protocol.Error
        if position == 3:
            answer = protocol.Error(request_id, "invalid_request", "no")
        else:
            answer = protocol.Result(request_id, 0, 10, 0.0)
        events.append(protocol.Answered(request_id, answer, token, False))
    worker.sent = []
    steps = _Steps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    try:
        dispatcher.on_events(worker, events)  # one read: results, a refusal for good, results
        with trio.CancelScope() as scope:
            first = await batch.__anext__()
            scope.cancel()
            await batch.__anext__()  # ready, but the scope is cancelled: raises
        assert scope.cancelled_caught
        handed = [first.chunk.stream]
        with pytest.raises(RequestFailed, match="invalid_request: no"), trio.fail_after(5):
            while True:
                handed.append((await batch.__anext__()).chunk.stream)
    finally:
        trio.lowlevel.remove_instrument(steps)
    # The burst's one schedule point, and the two steps of delivering the cancellation;
    # a schedule point per result took six.
    assert steps.steps == 3
    with trio.fail_after(5):
        rest = [result.chunk.stream async for result in batch]  # read with it: still theirs
    assert (handed, rest) == ([0, 1, 2], [4, 5])  # in the order read; stream 3 was refused


async def test_a_worker_breaking_in_the_middle_of_a_read_ends_each_chunk_once() -> None:
    """One read brings two results and then the end of the worker (a bad answer, say,
    after which ``CoordinatorEnd`` reports ``Broken`` with the rest as orphans): the two
    are handed out in one burst, the orphans go to the next worker, and every chunk
    comes back exactly once, each read's results with one schedule point."""
    dispatcher = Dispatcher(record, slots=1)
    first = FakeConnection(0)
    dispatcher.add_worker(first, depth=5)
    batch = batch_of(iter(Taken(5)), dispatcher, window=5, attempts=3)
    batch.start()
    sent, first.sent = list(first.sent), []
    first.usable = False
    events: list[protocol.CoordinatorEvent] = [
        protocol.Answered(request_id, protocol.Result(request_id, 0, 10, 0.0), token, False)
        for request_id, token in sent[:2]
    ]
    orphans = tuple(
        protocol.Orphan(request_id, token, was_running=index == 0, abandoned=False)
        for index, (request_id, token) in enumerate(sent[2:])
    )
    events.append(protocol.Broken("invalid message: as the test asked", orphans))
    dispatcher.on_events(first, events)
    second = FakeConnection(0)
    dispatcher.add_worker(second, depth=5)
    assert [token.chunk.stream for _, token in second.sent] == [2, 3, 4]  # retried, in order
    steps = _Steps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    try:
        handed = [(await batch.__anext__()).chunk.stream for _ in range(2)]
        second.answer_all(dispatcher)
        with trio.fail_after(5):
            handed += [result.chunk.stream async for result in batch]
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert sorted(handed) == [0, 1, 2, 3, 4] and handed[:2] == [0, 1]
    assert steps.steps == 2  # one schedule point for each read's burst (five before)


async def test_a_consumer_that_lags_takes_no_more_chunks_than_the_window_allows() -> None:
    """A consumer taking one result while its worker answered twice used to let the
    window fill again at each result: the ready queue grew by three every round. Now no
    chunk is taken while ``window`` results wait."""
    source = Taken(10_000)
    dispatcher, worker, batch = started(iter(source), depth=2, window=4)
    with trio.fail_after(5):
        for consumed in range(1, 101):
            worker.answer_all(dispatcher)
            worker.answer_all(dispatcher)
            await batch.__anext__()
            assert source.taken <= consumed + 2 * 4  # the results waiting, and a window in flight
    batch.close()


async def test_a_consumer_that_lags_holds_a_range_back_instead_of_its_pieces_piling_up() -> None:
    """The dispatcher cuts a range's pieces whenever a worker has room: with a consumer
    that took nothing, every read of the worker's answers added pieces to the ready
    queue, without limit. Now the range waits out of line once ``window`` results wait,
    and goes back in as soon as fewer do; the pieces still cover it once."""
    streams = 300
    dispatcher, worker, batch = started(iter([Chunk(SEED, 0, 10, streams=streams)]), depth=2, window=4)
    answered = 0
    for _ in range(50):  # one stream a piece (a version-1 worker), two in flight
        answered += worker.in_flight
        worker.answer_all(dispatcher)
    assert worker.in_flight == 0 and answered == 4 + 2  # held at the window; the two in flight came back
    seen: list[int] = []
    with trio.fail_after(5):
        while True:
            try:
                result = await batch.__anext__()
            except StopAsyncIteration:
                break
            seen.append(result.chunk.stream)
            answered += worker.in_flight
            worker.answer_all(dispatcher)
            assert answered - len(seen) <= 4 + 2  # never more waiting than that
    assert sorted(seen) == list(range(streams))
