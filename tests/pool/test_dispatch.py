"""``pool.dispatch``: requests matched with workers that have room, driven by hand.

No process, no pipes, no Trio run: ``FakeConnection`` stands for a worker's connection
(typed as ``dispatch.Connection``) and the test hands the dispatcher the events its
worker's answers would make. Each test pins one rule of the module's docstring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fake_connection import FakeConnection, record

from mcpi_coordinator.errors import McpiError, PoolClosed, RequestFailed, WorkerFailure
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.pool.dispatch import (
    LANE_FIRST_PIECE_POINTS,
    LANE_FIRST_PIECE_STREAMS,
    LANE_IMPLEMENTATION,
    LANE_WIDTH,
    RAMP,
    TARGET_PIECE_S,
    Dispatcher,
    Outcome,
    Request,
    _whole_lanes,
)
from mcpi_worker import protocol

SEED = 11


class Owner:
    """A request's owner: keeps each outcome, and splits ranges as ``Batch`` does."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[Request, Outcome]] = []

    def deliver(self, request: Request, outcome: Outcome) -> None:
        self.outcomes.append((request, outcome))

    def split(self, request: Request, streams: int) -> Request:
        assert request.chunk is not None
        head, request.chunk = request.chunk.split(streams)
        return Request(head, self.deliver, request.avoid, splitter=self.split)

    def request(self, chunk: Chunk | None) -> Request:
        return Request(chunk, self.deliver)


def in_line(request: Request) -> bool:
    """``request.waiting``, read through a call: mypy would keep what an earlier assert
    narrowed it to past the dispatcher's calls that change it."""
    return request.waiting


def sent_streams(worker: FakeConnection) -> list[int]:
    return [worker.streams[i] for i, _ in worker.sent]


def test_a_range_goes_out_in_pieces_that_grow_until_the_worker_has_answered() -> None:
    owner = Owner()
    dispatcher = Dispatcher(record)
    v2 = FakeConnection(0, version=protocol.RANGE_VERSION)
    dispatcher.add_worker(v2, depth=3)
    whole = Request(Chunk(SEED, 0, 1000, streams=100), owner.deliver, splitter=owner.split)
    dispatcher.dispatch(whole)
    # Its speed unknown, the worker gets one stream, then RAMP times more per piece.
    assert sent_streams(v2) == [1, RAMP, RAMP * RAMP]
    assert in_line(whole) and whole.chunk is not None and whole.chunk.stream == 1 + RAMP + RAMP * RAMP
    v2.answer_all(dispatcher, elapsed_s=1e-3)  # now it is known: ~0.25 s of work a piece
    assert [r.chunk.streams for r, _ in owner.outcomes if r.chunk] == [1, RAMP, RAMP * RAMP]
    assert sent_streams(v2)[0] > RAMP * RAMP
    pieces = [token.chunk for _, token in v2.sent]
    assert pieces[0].stream == 1 + RAMP + RAMP * RAMP  # in order, no gap
    # The only worker, and the rest well within its TARGET_PIECE_S: all of it goes out now.
    assert not in_line(whole) and sum(p.streams for p in pieces) == 100 - pieces[0].stream


def test_a_version_1_worker_gets_a_range_one_stream_at_a_time() -> None:
    owner = Owner()
    dispatcher = Dispatcher(record)
    v1 = FakeConnection(0, version=1)
    dispatcher.add_worker(v1, depth=2)
    dispatcher.dispatch(Request(Chunk(SEED, 0, 1000, streams=5), owner.deliver, splitter=owner.split))
    assert sent_streams(v1) == [1, 1]
    v1.answer_all(dispatcher, elapsed_s=1e-3)
    assert sent_streams(v1) == [1, 1]
    v1.answer_all(dispatcher, elapsed_s=1e-3)
    assert sent_streams(v1) == [1]
    v1.answer_all(dispatcher)
    assert sorted(r.chunk.stream for r, _ in owner.outcomes if r.chunk) == [0, 1, 2, 3, 4]


def test_a_broken_worker_fails_its_requests_over_and_gets_nothing_more() -> None:
    owner = Owner()
    dispatcher = Dispatcher(record, slots=2)
    doomed, spare = FakeConnection(0), FakeConnection(1)
    dispatcher.add_worker(doomed, depth=3)
    running, queued, withdrawn = (owner.request(Chunk(SEED, s, 10)) for s in range(3))
    for request in (running, queued, withdrawn):
        dispatcher.dispatch(request)
    dispatcher.withdraw(withdrawn)  # cancelled: its outcome is nobody's any more
    doomed.break_down(dispatcher, "exited (exit code 9)")
    failures = {request.chunk.stream: outcome for request, outcome in owner.outcomes if request.chunk}
    assert set(failures) == {0, 1}
    assert all(isinstance(f, WorkerFailure) and str(f) == "exited (exit code 9)" for f in failures.values())
    assert [f.was_running for f in failures.values() if isinstance(f, WorkerFailure)] == [True, False]
    dispatcher.add_worker(spare, depth=1)
    dispatcher.dispatch(owner.request(Chunk(SEED, 3, 10)))
    assert doomed.sent == [] and [t.chunk.stream for _, t in spare.sent] == [3]


def test_withdrawing_cancels_a_sent_request_and_takes_a_waiting_one_out_of_line() -> None:
    owner = Owner()
    dispatcher = Dispatcher(record)
    worker = FakeConnection(0)
    dispatcher.add_worker(worker, depth=1)
    sent, waiting = owner.request(Chunk(SEED, 0, 10)), owner.request(Chunk(SEED, 1, 10))
    dispatcher.dispatch(sent)
    dispatcher.dispatch(waiting)
    assert in_line(waiting)
    dispatcher.withdraw(waiting)
    dispatcher.withdraw(sent)
    assert worker.cancelled == [sent.request_id] and not in_line(waiting)
    worker.answer_all(dispatcher)  # the cancelled one's answer frees the room; nobody gets it
    assert owner.outcomes == [] and worker.sent == []


def test_a_worker_takes_no_more_per_job_than_it_has_shown_it_computes_at_once() -> None:
    owner = Owner()
    dispatcher = Dispatcher(record)
    wide = FakeConnection(0, jobs=4)
    dispatcher.add_worker(wide, depth=8, per_job=2)  # its welcome claims 4 jobs
    for stream in range(10):
        dispatcher.dispatch(owner.request(Chunk(SEED, stream, 10)))
    assert wide.in_flight == 2
    wide.jobs_shown = 3  # it has been seen computing three at once
    wide.answer_all(dispatcher)
    assert wide.in_flight == 6


def test_requests_wait_for_every_slot_to_say_what_it_offers_then_fail_if_none_can() -> None:
    owner = Owner()
    dispatcher = Dispatcher(record, slots=2)
    dispatcher.add_worker(FakeConnection(0, kernels=("numpy",)), depth=1)
    python = owner.request(Chunk(SEED, 0, 10, "python"))
    dispatcher.dispatch(python)
    assert in_line(python) and owner.outcomes == []  # slot 1 may still offer it
    dispatcher.forget_slot(1)  # it never will: retired
    ((request, outcome),) = owner.outcomes
    assert request is python and not in_line(python)
    assert isinstance(outcome, RequestFailed) and "no worker offers kernel 'python'" in str(outcome)


def test_a_request_a_replacement_no_longer_offers_fails_rather_than_waiting_for_ever() -> None:
    owner = Owner()
    dispatcher = Dispatcher(record, slots=1)
    first = FakeConnection(0, kernels=("numpy", "python"))
    dispatcher.add_worker(first, depth=1)
    sent, waiting = owner.request(Chunk(SEED, 0, 10)), owner.request(Chunk(SEED, 1, 10))
    dispatcher.dispatch(sent)
    dispatcher.dispatch(waiting)
    first.break_down(dispatcher, "exited (exit code 9)")
    assert in_line(waiting)  # the slot's next worker may serve it
    dispatcher.add_worker(FakeConnection(0, kernels=("python",)), depth=1)  # it offers numpy no more
    assert not in_line(waiting)
    [outcome] = [outcome for request, outcome in owner.outcomes if request is waiting]
    assert isinstance(outcome, RequestFailed) and "no worker offers kernel 'numpy'" in str(outcome)


def test_a_refusal_is_the_requests_outcome_and_a_pong_is_none() -> None:
    owner = Owner()
    dispatcher = Dispatcher(record)
    worker = FakeConnection(3)
    dispatcher.add_worker(worker, depth=2)
    dispatcher.dispatch(owner.request(Chunk(SEED, 0, 10)))
    dispatcher.dispatch(owner.request(None))
    worker.refuse_all(dispatcher, protocol.ErrorCode.BUSY)
    (_, refused), (_, ping) = owner.outcomes
    assert isinstance(refused, RequestFailed) and refused.retryable
    assert str(refused) == "worker 3 refused the request: busy: as the test asked"
    assert isinstance(ping, McpiError)  # a ping refused is refused like a sample
    dispatcher.dispatch(owner.request(None))
    worker.answer_all(dispatcher)
    assert owner.outcomes[-1][1] is None


def _recorder() -> tuple[list[tuple[str, object]], Any]:
    outcomes: list[tuple[str, object]] = []

    def deliver(request: Request, outcome: object) -> None:
        outcomes.append((request.chunk.kernel if request.chunk else "ping", outcome))

    return outcomes, deliver


def test_requests_go_to_retries_first_then_in_arrival_order() -> None:
    dispatcher = Dispatcher(record)
    outcomes, deliver = _recorder()
    order: list[str] = []

    def request(name: str) -> Request:
        def named(r: Request, outcome: object) -> None:
            order.append(name)
            deliver(r, outcome)

        return Request(Chunk(SEED, len(order), 10), named)

    fresh1, fresh2, retry, withdrawn = (request(n) for n in ("fresh1", "fresh2", "retry", "withdrawn"))
    for r in (fresh1, fresh2):
        dispatcher.dispatch(r)
    dispatcher.dispatch(retry, retry=True)
    dispatcher.dispatch(withdrawn)
    dispatcher.withdraw(withdrawn)
    stale = FakeConnection(0, usable=False)
    dispatcher.add_worker(stale, depth=4)
    assert stale.sent == []  # a worker that failed meanwhile gets nothing
    worker = FakeConnection(1)
    dispatcher.add_worker(worker, depth=2)
    assert [token for _, token in worker.sent] == [retry, fresh1]  # retries first
    worker.answer_all(dispatcher)  # its room goes to the next in line, at once
    assert [token for _, token in worker.sent] == [fresh2]
    assert order == ["retry", "fresh1"]
    late = request("late")
    dispatcher.dispatch(late)  # room for one more: sent now
    assert [token for _, token in worker.sent] == [fresh2, late]
    queued = request("queued")
    dispatcher.dispatch(queued)
    dispatcher.close(PoolClosed("closed"))
    assert order[-1] == "queued" and isinstance(outcomes[-1][1], PoolClosed)
    dispatcher.dispatch(request("after close"))
    assert order[-1] == "after close" and isinstance(outcomes[-1][1], PoolClosed)


def test_requests_go_only_to_workers_that_offer_what_they_need() -> None:
    dispatcher = Dispatcher(record)
    outcomes, deliver = _recorder()
    numpy_only = FakeConnection(0, kernels=("numpy",))
    python_only = FakeConnection(1, kernels=("python",))
    dispatcher.add_worker(numpy_only, depth=1)
    dispatcher.add_worker(python_only, depth=1)
    dispatcher.dispatch(Request(Chunk(SEED, 0, 10, "numpy"), deliver))
    dispatcher.dispatch(Request(Chunk(SEED, 1, 10, "numpy"), deliver))  # waits for numpy_only
    dispatcher.dispatch(Request(Chunk(SEED, 2, 10, "python"), deliver))  # overtakes it
    assert [t.chunk.kernel for _, t in numpy_only.sent] == ["numpy"]
    assert [t.chunk.kernel for _, t in python_only.sent] == ["python"]
    python_only.answer_all(dispatcher)
    assert python_only.sent == []  # the numpy chunk in line is not for it
    numpy_only.answer_all(dispatcher)
    assert [t.chunk.stream for _, t in numpy_only.sent] == [1]
    dispatcher.dispatch(Request(Chunk(SEED, 3, 10, "cuda"), deliver))
    kernel, failure = outcomes[-1]
    assert kernel == "cuda" and isinstance(failure, RequestFailed) and not failure.retryable
    assert "no worker offers kernel 'cuda'" in str(failure)
    dispatcher.dispatch(Request(Chunk(SEED, 4, 10, "numpy"), deliver, avoid=frozenset({0})))
    assert "slots [0] are avoided" in str(outcomes[-1][1])
    solo = Dispatcher(record)
    solo.add_worker(FakeConnection(7), depth=1)
    solo.dispatch(Request(Chunk(SEED, 5, 10), deliver, avoid=frozenset({7})))
    assert "every worker that could take it is avoided (slots [7])" in str(outcomes[-1][1])


def test_a_thousand_refused_requests_are_a_loop_not_a_recursion() -> None:
    """Issue 11, defect 2: each refusal used to start the next request from inside the
    previous one's refusal; 1000 of them overflowed the stack."""
    dispatcher = Dispatcher(record)
    outcomes, deliver = _recorder()
    busy = FakeConnection(0, kernels=("numpy",))
    dispatcher.add_worker(busy, depth=1)
    dispatcher.dispatch(Request(Chunk(SEED, 0, 10), deliver))  # holds the only room
    again: list[int] = []

    def retry_forever(request: Request, outcome: object) -> None:
        # A caller that dispatches again from its delivery: still no recursion.
        if len(again) < 5000 and isinstance(outcome, RequestFailed):
            again.append(1)
            dispatcher.dispatch(Request(Chunk(SEED, 1, 10, "python"), retry_forever))

    for stream in range(1000):
        dispatcher.dispatch(Request(Chunk(SEED, stream, 10, "python"), retry_forever))
    assert len(again) == 5000
    busy.answer_all(dispatcher)
    assert outcomes and isinstance(outcomes[0][1], ChunkResult)


def test_a_lane_worker_gets_whole_lane_groups_once_its_speed_is_known() -> None:
    """After its first answers say it counts in lanes, every piece a worker gets is a
    multiple of the lane width (its speed asks for 11 streams a piece, padded to 16 lanes
    anyway), except the rest of the range; a worker counting otherwise keeps its 11."""
    pieces: dict[str, list[int]] = {}
    for implementation in (LANE_IMPLEMENTATION, "numpy"):
        owner = Owner()
        dispatcher = Dispatcher(record)
        worker = FakeConnection(0, version=protocol.RANGE_VERSION)
        dispatcher.add_worker(worker, depth=1)
        whole = Request(Chunk(SEED, 0, 1000, streams=100), owner.deliver, splitter=owner.split)
        dispatcher.dispatch(whole)
        assert sent_streams(worker) == [1]  # speed unknown: one stream
        # 1000 points in 1000 / 44 s: 44 000 points/s, 11 streams in TARGET_PIECE_S.
        elapsed = 1000 / (11 / TARGET_PIECE_S * 1000)
        worker.answer_all(dispatcher, elapsed_s=elapsed, implementation=implementation)
        for _ in range(100):
            if not worker.sent:
                break
            worker.answer_all(dispatcher, elapsed_s=elapsed * sent_streams(worker)[0], implementation=implementation)
        assert not worker.sent and not in_line(whole)
        sizes = [r.chunk.streams for r, _ in owner.outcomes if r.chunk]
        assert sum(sizes) == 100
        pieces[implementation] = sizes[1:]
    lanes = pieces[LANE_IMPLEMENTATION]
    assert all(size % LANE_WIDTH == 0 for size in lanes[:-1]), lanes
    assert lanes[-1] <= LANE_WIDTH, lanes
    assert 11 in pieces["numpy"], pieces


def test_a_lane_piece_is_never_larger_than_the_worker_admits() -> None:
    assert _whole_lanes(11, most=1000) == LANE_WIDTH
    assert _whole_lanes(24, most=1000) == LANE_WIDTH  # halves round down
    assert _whole_lanes(25, most=1000) == 2 * LANE_WIDTH
    assert _whole_lanes(40, most=40) == 2 * LANE_WIDTH  # 48 rounded down to what it admits
    assert _whole_lanes(11, most=11) == 11  # it admits less than a lane group
    assert _whole_lanes(3, most=1000) == LANE_WIDTH  # one group at least


LANE_STREAM_S = {1: 6.5e-3, 2: 6.4e-3, 3: 6.4e-3, 4: 6.2e-3, 8: 3.1e-3, 16: 2.2e-3, 32: 1.85e-3}
"""Seconds per stream of 1e7 points in a piece of that many streams, roughly as the numba
lane kernel takes them on one core (``benchmarks/kernel.py``): one to three streams go
through the single-stream loop, a few fill one vector, 32 or more run at full speed."""


def lane_piece_s(streams: int) -> float:
    width = max((w for w in LANE_STREAM_S if w <= streams), default=1)
    return streams * LANE_STREAM_S[width]


def run_range_on_lane_workers(
    workers: int,
    streams: int,
    starts: list[float],
    cost: Callable[[int], float] = lane_piece_s,
    *,
    welcome_lanes: bool = False,
) -> list[tuple[int, float, float, Chunk]]:
    """A range of ``streams`` streams of 1e7 points through the dispatcher to ``workers``
    lane workers (depth 2, one job each) that become ready at ``starts`` and compute a
    piece of n streams in ``cost(n)`` seconds (default ``lane_piece_s``), on a simulated
    clock; with ``welcome_lanes``, their welcomes say so (as a worker's that ``mcpi
    estimate`` started early, its load begun, does), else only their answers do. Every
    piece: (slot, start, end, chunk). ``benchmarks/tail_balance.py`` runs it with costs
    measured on the machine it runs on."""
    owner = Owner()
    now = 0.0
    dispatcher = Dispatcher(record, workers, clock=lambda: now)
    said = (LANE_IMPLEMENTATION, "python") if welcome_lanes else ()
    fakes = [FakeConnection(slot, version=protocol.RANGE_VERSION, implementations=said) for slot in range(workers)]
    busy_until = dict.fromkeys(range(workers), 0.0)
    ends: dict[tuple[int, int], tuple[float, float]] = {}
    pieces: list[tuple[int, float, float, Chunk]] = []
    whole = Request(Chunk(SEED, 0, 10**7, streams=streams), owner.deliver, splitter=owner.split)
    ready = sorted(range(workers), key=lambda slot: starts[slot])

    def plan() -> None:  # each worker computes what it holds in order, one piece at a time
        for fake in fakes:
            for request_id, token in fake.sent:
                if (fake.slot, request_id) not in ends:
                    begin = max(busy_until[fake.slot], now)
                    busy_until[fake.slot] = begin + cost(token.chunk.streams)
                    ends[fake.slot, request_id] = (begin, busy_until[fake.slot])

    for _ in range(10 * streams):
        due = [(ends[f.slot, f.sent[0][0]][1], f.slot) for f in fakes if f.sent]
        if ready and (not due or starts[ready[0]] <= min(due)[0]):
            slot = ready.pop(0)
            now = busy_until[slot] = starts[slot]
            dispatcher.add_worker(fakes[slot], depth=2)
            if not pieces and whole.connection is None and not in_line(whole):
                dispatcher.dispatch(whole)
        elif due:
            now, slot = min(due)
            begin, end = ends[slot, fakes[slot].sent[0][0]]
            chunk = fakes[slot].answer_first(dispatcher, end - begin, LANE_IMPLEMENTATION)
            pieces.append((slot, begin, end, chunk))
        else:
            break
        plan()
    return pieces


def test_a_worker_s_one_stream_pieces_do_not_hold_down_the_speed_its_lanes_show() -> None:
    """A lane worker's first pieces, one stream each, run its single-stream loop, several
    times slower a point than its lanes; once a piece in lanes has answered, the next
    piece is sized by the lanes' speed (about ``TARGET_PIECE_S`` of it), not by an average
    still held down by the first answers."""
    owner = Owner()
    dispatcher = Dispatcher(record)
    worker = FakeConnection(0, version=protocol.RANGE_VERSION)
    dispatcher.add_worker(worker, depth=1)
    dispatcher.dispatch(Request(Chunk(SEED, 0, 10**7, streams=1000), owner.deliver, splitter=owner.split))
    worker.answer_first(dispatcher, lane_piece_s(1), LANE_IMPLEMENTATION)
    lanes = sent_streams(worker)[0]
    assert lanes >= LANE_WIDTH
    worker.answer_first(dispatcher, lane_piece_s(lanes), LANE_IMPLEMENTATION)
    lane_speed = 1e7 / LANE_STREAM_S[32]
    assert sent_streams(worker)[0] >= 0.8 * TARGET_PIECE_S * lane_speed / 1e7


def test_the_end_of_a_range_is_shared_for_both_workers_to_end_at_once() -> None:
    """Two lane workers, ready together or one a little later: every stream goes out once,
    in order; the pieces stay at whole lane groups of full speed to the end (no tail of
    small, slower shares), and the two end within one piece of 16 streams of each other
    and of an even split of the work."""
    for starts in ([0.0, 0.0], [0.0, 0.03]):
        pieces = run_range_on_lane_workers(2, 1000, starts)
        chunks = sorted((chunk for *_, chunk in pieces), key=lambda chunk: chunk.stream)
        assert [c.stream for c in chunks] == [sum(c.streams for c in chunks[:i]) for i in range(len(chunks))]
        assert sum(c.streams for c in chunks) == 1000
        ends = [max(end for slot, _, end, _ in pieces if slot == s) for s in (0, 1)]
        work = sum(end - begin for _, begin, end, _ in pieces)
        group_s = lane_piece_s(LANE_WIDTH)
        assert abs(ends[0] - ends[1]) <= group_s, (starts, ends)
        assert max(ends) <= (work + sum(starts)) / 2 + group_s, (starts, ends, work)
        lane_pieces = [c.streams for c in chunks if c.streams >= LANE_WIDTH]
        assert min(lane_pieces) >= 2 * LANE_WIDTH, (starts, sorted(c.streams for c in chunks))


def test_the_streams_past_the_last_lane_group_are_shared_not_counted_by_one_worker_alone() -> None:
    """1000 streams on two lane workers ready together leave 4 streams past the last whole
    lane groups. Rounded up to a group, all four went to the worker that asked first, which
    counted them alone (a piece of 4 streams, several times slower a stream than full lanes)
    while the other had ended; shared, each worker's last piece is a part of them, and the
    two end closer together than that piece takes."""
    pieces = run_range_on_lane_workers(2, 1000, [0.0, 0.0])
    last = {slot: max((end, chunk.streams) for s, _, end, chunk in pieces if s == slot) for slot in (0, 1)}
    assert all(streams < LANE_WIDTH for _, streams in last.values()), last
    assert sum(chunk.streams for *_, chunk in pieces) == 1000
    assert abs(last[0][0] - last[1][0]) < lane_piece_s(4), last


def test_a_worker_whose_welcome_says_it_counts_in_lanes_gets_lane_groups_from_its_first_piece() -> None:
    """Before its first answer a worker gets one stream, then ``RAMP`` times more, up to
    ``FIRST_PIECE_POINTS``: of 1e7-point streams, one at a time, which a lane worker counts
    in its single-stream loop, several times slower a point. A worker whose welcome says it
    counts the kernel in lanes gets whole lane groups from the first piece instead
    (``LANE_FIRST_PIECE_STREAMS``, then more), up to ``LANE_FIRST_PIECE_POINTS``; where not
    one lane group fits in that (streams of 1e9 points), one stream as before.
    A welcome saying so of another kernel, or not saying, changes nothing."""
    firsts: dict[tuple[tuple[str, ...], int, str], list[int]] = {}
    for said in ((), (LANE_IMPLEMENTATION, "python"), ("numpy", LANE_IMPLEMENTATION)):
        for points in (10**7, 10**9):
            for kernel in ("numpy", "python"):
                owner = Owner()
                dispatcher = Dispatcher(record)
                worker = FakeConnection(0, version=protocol.RANGE_VERSION, implementations=said)
                dispatcher.add_worker(worker, depth=2)
                chunk = Chunk(SEED, 0, points, streams=1000, kernel=kernel)
                dispatcher.dispatch(Request(chunk, owner.deliver, splitter=owner.split))
                firsts[said, points, kernel] = sent_streams(worker)
    lanes, python_in_lanes = (LANE_IMPLEMENTATION, "python"), ("numpy", LANE_IMPLEMENTATION)
    first = LANE_FIRST_PIECE_STREAMS
    assert first % LANE_WIDTH == 0 and first * 10**7 <= LANE_FIRST_PIECE_POINTS < LANE_WIDTH * 10**9
    in_groups = {(lanes, 10**7, "numpy"), (python_in_lanes, 10**7, "python")}
    lane_pieces = {key for key, sizes in firsts.items() if sizes[0] == first and sizes[1] % LANE_WIDTH == 0}
    assert lane_pieces == in_groups, firsts
    assert all(sizes == [1, 1] for key, sizes in firsts.items() if key not in in_groups), firsts


def test_lane_groups_from_the_first_piece_cost_two_workers_less_and_end_them_sooner() -> None:
    """The range of ``test_the_end_of_a_range_is_shared_for_both_workers_to_end_at_once``
    on workers whose welcomes say they count in lanes: every stream once, the pieces'
    CPU and the later end both below what the same workers take when only their answers
    say so (their first pieces one stream each)."""
    for starts in ([0.0, 0.0], [0.0, 0.03]):
        said, unsaid = (run_range_on_lane_workers(2, 1000, starts, welcome_lanes=w) for w in (True, False))
        chunks = sorted((chunk for *_, chunk in said), key=lambda chunk: chunk.stream)
        assert [c.stream for c in chunks] == [sum(c.streams for c in chunks[:i]) for i in range(len(chunks))]
        assert sum(c.streams for c in chunks) == 1000
        runs = {"said": said, "unsaid": unsaid}
        work = {key: sum(end - begin for _, begin, end, _ in pieces) for key, pieces in runs.items()}
        ends = {key: max(end for _, _, end, _ in pieces) for key, pieces in runs.items()}
        assert work["said"] < work["unsaid"], (starts, work)
        assert ends["said"] < ends["unsaid"], (starts, ends)
