"""The two sans-IO connection ends, alone and wired to each other: every request ends once.

``CoordinatorEnd`` and ``WorkerEnd`` hold every rule of the protocol about *when* things
happen. Here they are driven with no I/O at all: bytes from one are fed to the other,
clock readings are numbers, and hypothesis chooses the interleaving — requests, answers,
cancels, end of input, bad answers, a stall. Whatever it chooses, every request the
coordinator sent ends exactly once: answered, or handed back as an orphan of ``Broken``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpi_coordinator.pool.chunks import Chunk
from mcpi_worker.protocol import (
    COORDINATOR_MESSAGES,
    STREAM_COST_POINTS,
    Answered,
    Broken,
    CoordinatorEnd,
    CoordinatorState,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    LocalProtocolError,
    Pong,
    Result,
    Sample,
    Shutdown,
    StartSample,
    StopSample,
    Welcome,
    Welcomed,
    WorkerEnd,
    WorkerOffer,
    WorkerState,
    encode,
)

OFFER = WorkerOffer(worker="test", pid=1, host="h", kernels=("numpy",), max_inflight=8)
WELCOME = Welcome(2, "test", 1, "h", ("numpy",), 8, 1 << 20, 1 << 40)


def budget(work: int) -> float:
    """10 s, and 1 ms per point of a plain sample (its work less one stream's set-up)."""
    return 10.0 + max(0, work - STREAM_COST_POINTS) / 1000


def serving(jobs: int = 1) -> CoordinatorEnd:
    end = CoordinatorEnd(client="tests", task_budget=budget)
    end.data_to_send()  # the hello
    welcome = Welcome(2, "test", 1, "h", ("numpy",), max(8, jobs), 1 << 20, 1 << 40, jobs=jobs)
    assert end.receive_data(encode(welcome), 0.0) == [Welcomed(welcome)]
    return end


# ------------------------------------------------------------------ CoordinatorEnd alone


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("quantum_flux", "with a code protocol version 2 does not have: quantum_flux: no"),
        *((code, f"which its welcome admits: {code}: no") for code in (
            ErrorCode.UNKNOWN_KERNEL, ErrorCode.INVALID_REQUEST, ErrorCode.DUPLICATE_ID,
            ErrorCode.HANDSHAKE_REQUIRED, ErrorCode.UNKNOWN_TYPE,
        )),
    ],
)  # fmt: skip
def test_a_refusal_for_good_of_a_request_its_welcome_admits_breaks_the_worker(code: str, reason: str) -> None:
    """Every request goes out only once the welcome admits it, so a per-request error that
    is not retryable (a code of §8, or one version 2 does not have) contradicts the
    welcome: the connection breaks, naming the request, the code and the message, and
    the refused request comes back charged as running even when the worker had only
    queued it (the one that was running comes back too); the ping was no one's fault."""
    end = serving()
    end.send_sample(1, 0, 10, "numpy", now=0.0, token="running")
    queued = end.send_sample(1, 1, 10, "numpy", now=0.0, token="queued")
    end.send_ping(now=0.0, token="ping")
    [broken] = end.receive_data(encode(Error(queued, code, "no")), 1.0)
    assert isinstance(broken, Broken)
    assert broken.reason == f"refused request id {queued}, {reason}".replace(", with", " with")
    assert {o.token: o.was_running for o in broken.orphans} == {"running": True, "queued": True, "ping": False}
    assert end.state is CoordinatorState.BROKEN and end.in_flight == 0


@pytest.mark.parametrize("code", [ErrorCode.BUSY, ErrorCode.CANCELLED, ErrorCode.INTERNAL])
def test_a_retryable_refusal_is_the_request_s_answer(code: str) -> None:
    end = serving()
    request_id = end.send_sample(1, 0, 10, "numpy", now=0.0, token="chunk")
    [answered] = end.receive_data(encode(Error(request_id, code, "later")), 1.0)
    assert answered == Answered(request_id, Error(request_id, code, "later"), "chunk", False)
    assert end.state is CoordinatorState.SERVING


def test_an_answer_is_checked_whole_before_the_request_is_let_go() -> None:
    """A bad answer breaks the connection with its request still in the table: the
    request comes back as an orphan, never lost (it used to be popped first)."""
    for bad in (
        Result(1, 11, 10, 0.1),  # more inside than points
        Result(1, 5, 11, 0.1),  # not the request's points
        Pong(1),  # a pong for a sample
        Result(1, 5, 30, 0.1, (5, 0, 0)),  # counts per group for a plain sample
    ):
        end = serving()
        end.send_sample(1, 0, 10, "numpy", now=0.0, token="chunk")
        [broken] = end.receive_data(encode(bad), 1.0)
        assert isinstance(broken, Broken), bad
        assert [o.token for o in broken.orphans] == ["chunk"] and broken.orphans[0].was_running
        assert end.state is CoordinatorState.BROKEN and end.in_flight == 0


@pytest.mark.parametrize(
    ("insides", "why"),
    [
        (None, "sent none counts"),
        ((30,), "sent 1 counts for the 2 groups"),
        ((21, 9), "more inside than a group has points"),
        ((9, 11), "more inside than a group has points"),
        ((10, 9), "do not add up"),
    ],
)
def test_a_range_s_counts_per_group_are_checked(insides: Any, why: str) -> None:
    end = serving()
    end.send_sample(1, 0, 10, "numpy", streams=3, group=2, now=0.0, token="range")
    [broken] = end.receive_data(encode(Result(1, 20, 30, 0.1, insides)), 1.0)
    assert isinstance(broken, Broken) and why in broken.reason
    end = serving()
    end.send_sample(1, 0, 10, "numpy", streams=3, group=2, now=0.0, token="range")
    [answered] = end.receive_data(encode(Result(1, 20, 30, 0.1, (12, 8))), 1.0)
    assert isinstance(answered, Answered) and answered.token == "range"


def test_requests_the_welcome_rules_out_are_our_bug_not_the_worker_s() -> None:
    end = serving()
    with pytest.raises(LocalProtocolError, match="does not offer kernel"):
        end.send_sample(1, 0, 10, "python", now=0.0)
    with pytest.raises(LocalProtocolError, match="max_points"):
        end.send_sample(1, 0, 1 << 41, "numpy", now=0.0)
    v1 = CoordinatorEnd(client="tests", task_budget=budget)
    v1.receive_data(encode(Welcome(1, "old", 1, "h", ("numpy",), 8, 1 << 20, 1 << 40)), 0.0)
    with pytest.raises(LocalProtocolError, match="need protocol version 2"):
        v1.send_sample(1, 0, 10, "numpy", streams=2, now=0.0)
    fresh = CoordinatorEnd(client="tests", task_budget=budget)
    with pytest.raises(LocalProtocolError, match="await_welcome"):
        fresh.send_ping(now=0.0)


@pytest.mark.parametrize("checked", [False, True])
def test_a_sample_whose_fields_were_checked_where_they_were_made_still_meets_the_welcome(checked: bool) -> None:
    """``send_checked`` (the pool's ``Chunk``, checked where it is made) spares the field
    table's check alone: what the welcome rules out is refused either way, and nothing is
    sent. ``send_sample`` refuses fields that break the table too."""

    def send(end: CoordinatorEnd, points: int, kernel: str, streams: int = 1) -> int:
        if checked:
            return end.send_checked(Chunk(1, 0, points, kernel, streams), now=0.0)
        return end.send_sample(1, 0, points, kernel, streams=streams, group=None if streams == 1 else 1, now=0.0)

    end = serving()
    if not checked:
        for seed, stream in ((-1, 0), (1 << 64, 0), (1, -1), (True, 0)):
            with pytest.raises(LocalProtocolError, match="not a valid sample"):
                end.send_sample(seed, stream, 10, "numpy", now=0.0)
    for kernel, points, rule in (("python", 10, "does not offer kernel"), ("numpy", 1 << 40, "max_points")):
        with pytest.raises(LocalProtocolError, match=rule):
            send(end, points, kernel, streams=2 if points == 1 << 40 else 1)
    v1 = CoordinatorEnd(client="tests", task_budget=budget)
    v1.receive_data(encode(Welcome(1, "old", 1, "h", ("numpy",), 8, 1 << 20, 1 << 40)), 0.0)
    v1.data_to_send()
    with pytest.raises(LocalProtocolError, match="need protocol version 2"):
        send(v1, 10, "numpy", streams=2)
    assert end.data_to_send() == b"" and v1.data_to_send() == b"" and end.in_flight == v1.in_flight == 0


def test_send_checked_sends_a_chunk_as_a_plain_sample_or_a_range_counted_per_stream() -> None:
    end = serving()
    end.send_checked(Chunk(1, 0, 10, "numpy"), now=0.0, token="plain")
    end.send_checked(Chunk(1, 1, 10, "numpy", streams=3), now=0.0, token="range")
    decoder = FrameDecoder(COORDINATOR_MESSAGES)
    decoder.feed(end.data_to_send())
    assert [decoder.next_message() for _ in range(2)] == [
        Sample(1, 1, 0, 10, "numpy"),
        Sample(2, 1, 1, 10, "numpy", streams=3, group=1),
    ]


def test_nothing_follows_shutdown() -> None:
    """protocol.md §9: after ``shutdown`` the worker reads nothing, so the coordinator's end
    sends nothing more: no request (refused here, our bug), and no ``cancel`` either (the
    shutdown stops every request; the one in flight is still answered and waited for)."""
    end = serving()
    request_id = end.send_sample(1, 0, 10, "numpy", now=0.0, token="chunk")
    end.shutdown()
    assert end.data_to_send().endswith(encode(Shutdown()))
    assert end.cancel(request_id) is True  # abandoned: its answer is nobody's now
    assert end.cancel(request_id) is False
    end.shutdown()  # twice is once
    for send in (lambda: end.send_sample(1, 1, 10, "numpy", now=0.0), lambda: end.send_ping(now=0.0)):
        with pytest.raises(LocalProtocolError, match="closing"):
            send()
    assert end.data_to_send() == b""
    [answered] = end.receive_data(encode(Error(request_id, ErrorCode.CANCELLED, "closing")), 1.0)
    assert isinstance(answered, Answered) and answered.abandoned and answered.token == "chunk"
    assert end.receive_eof(2.0) == [] and end.state is CoordinatorState.CLOSED


def test_no_notification_goes_past_the_max_frame_a_welcome_sets() -> None:
    """protocol.md §2: no frame to a worker exceeds its ``welcome.max_frame``, notifications
    included. With 15 bytes a ``ping`` (id 1) and a ``shutdown`` fit and the ``cancel`` of
    that ping (17) does not: it is not sent, and the ping is still waited for. With 14
    nothing fits, not even the ``shutdown``: the end of stdin ends such a worker (§9)."""
    for max_frame, fits in ((15, True), (14, False)):
        end = CoordinatorEnd(client="tests", task_budget=budget)
        end.data_to_send()  # the hello
        welcome = Welcome(2, "test", 1, "h", ("numpy",), 8, max_frame, 1 << 40)
        assert end.receive_data(encode(welcome), 0.0) == [Welcomed(welcome)]
        if fits:
            ping = end.send_ping(now=0.0, token="ping")
            assert len(end.data_to_send()) == 4 + max_frame
            assert end.cancel(ping) is True  # abandoned, though the worker is not told
            assert end.data_to_send() == b""
            end.shutdown()
            assert end.data_to_send() == encode(Shutdown())
            [answered] = end.receive_data(encode(Pong(ping)), 1.0)
            assert isinstance(answered, Answered) and answered.abandoned
        else:
            with pytest.raises(LocalProtocolError, match="would refuse"):
                end.send_ping(now=0.0)
            end.shutdown()
            assert end.data_to_send() == b""
        assert end.receive_eof(2.0) == [] and end.state is CoordinatorState.CLOSED


def test_request_ids_count_up_and_are_never_reused() -> None:
    """protocol.md §6: one id space for samples and pings, and an id is not used again once
    its request is answered (a worker would take a late answer for the new request)."""
    end = serving()
    first = [end.send_sample(1, 0, 10, "numpy", now=0.0), end.send_ping(now=0.0)]
    for request_id in first:
        answer = Pong(request_id) if request_id == first[1] else Result(request_id, 7, 10, 0.1)
        [answered] = end.receive_data(encode(answer), 1.0)
        assert isinstance(answered, Answered)
    later = [end.send_sample(1, 1, 10, "numpy", now=2.0), end.send_ping(now=2.0)]
    assert len(set(first + later)) == 4 and sorted(first + later) == first + later


def test_end_of_file_before_shutdown_breaks_the_worker_even_with_nothing_outstanding() -> None:
    """protocol.md §5: a worker that ends by itself can serve no more; only after our
    ``shutdown``, with every request answered, is end of file the orderly end."""
    end = serving()
    [broken] = end.receive_eof(1.0)
    assert isinstance(broken, Broken) and broken.orphans == () and "closed its stdout" in broken.reason


def test_the_stall_clock_charges_a_sample_only_from_when_it_could_start() -> None:
    end = serving()
    end.send_sample(1, 0, 10_000, "numpy", now=0.0)  # budget 20 s
    end.send_sample(1, 1, 0, "numpy", now=0.0)  # budget 10 s, queued behind the first
    assert end.next_deadline() == 20.0  # only the running one counts
    end.receive_data(encode(Result(1, 7000, 10_000, 15.0)), 15.0)
    assert end.next_deadline() == 25.0  # the second could start at 15
    assert end.advance(24.9) == []
    [broken] = end.advance(25.0)
    assert isinstance(broken, Broken) and "task timeout (10 s)" in broken.reason


def test_a_late_ring_restarts_each_request_s_clock_once() -> None:
    """``restart_clocks`` (the coordinator was away: its stall clock rang late) gives each
    request in flight a fresh budget once. A second late ring during the same request
    judges it: a coordinator away at every ring gave a fresh budget each time, and a
    hung worker was never judged."""
    end = serving()
    end.send_sample(1, 0, 0, "numpy", now=0.0)  # budget 10 s
    end.send_sample(1, 1, 0, "numpy", now=0.0)  # queued behind it: not charged yet
    end.restart_clocks(25.0)  # away from before 10 to 25
    assert end.next_deadline() == 35.0 and end.advance(34.9) == []
    end.receive_data(encode(Result(1, 0, 0, 0.0)), 30.0)  # the second is charged from 30
    end.restart_clocks(50.0)  # away again: its first restart
    assert end.next_deadline() == 60.0 and end.advance(59.9) == []
    end.restart_clocks(75.0)  # and again: charged on from 50
    [broken] = end.advance(75.0)
    assert isinstance(broken, Broken) and "task timeout (10 s)" in broken.reason


def test_pongs_do_not_move_a_hung_sample_s_deadline() -> None:
    end = serving()
    end.send_sample(1, 0, 0, "numpy", now=0.0)  # budget 10 s
    for t in range(1, 10):
        request_id = end.send_ping(now=float(t))
        end.receive_data(encode(Pong(request_id)), t + 0.001)
        assert end.next_deadline() == 10.0
    assert isinstance(end.advance(10.0)[0], Broken)


def test_with_jobs_only_the_oldest_sample_is_charged_from_when_it_became_the_oldest() -> None:
    end = serving(jobs=2)
    for stream in range(3):
        end.send_sample(1, stream, 0, "numpy", now=float(stream))  # 10 s each
    assert end.next_deadline() == 10.0  # stream 0, the oldest, sent at 0
    end.receive_data(encode(Result(2, 0, 0, 0.0)), 4.0)  # a newer one answered first
    assert end.next_deadline() == 10.0  # never moves the oldest's deadline later
    end.receive_data(encode(Result(1, 0, 0, 0.0)), 5.0)
    assert end.next_deadline() == 15.0  # stream 2 became the oldest at 5
    [broken] = end.fail("the driver gave up")
    assert isinstance(broken, Broken)
    assert [o.was_running for o in broken.orphans] == [True]  # one of the jobs oldest


def test_a_serial_worker_overstating_its_jobs_is_not_taken_for_a_stalled_one() -> None:
    """A worker announcing 1024 jobs that computes one sample at a time, each within its
    budget: charged from their sending, the later samples overran theirs (queued, not
    stalled) and the worker was killed."""
    end = serving(jobs=1024)
    for stream in range(8):
        end.send_sample(1, stream, 0, "numpy", now=0.0)  # 10 s each, all sent at once
    for request_id in range(1, 9):
        now = 9.0 * request_id  # one answer every 9 s
        assert end.advance(now - 0.5) == []
        assert end.receive_data(encode(Result(request_id, 0, 0, 9.0)), now)[0].request_id == request_id  # type: ignore[union-attr]
    assert end.in_flight == 0 and end.broken is None


def test_jobs_are_believed_only_as_far_as_results_show_them_computed_at_once() -> None:
    end = serving(jobs=4)
    for stream in range(8):
        end.send_sample(1, stream, 0, "numpy", now=0.0)
    assert end.jobs_shown == 1
    end.receive_data(encode(Result(1, 0, 0, 10.0)), 10.0)  # ran 0..10
    end.receive_data(encode(Result(2, 0, 0, 10.0)), 20.0)  # 10..20: after it, not beside it
    end.receive_data(encode(Result(3, 0, 0, 0.0005)) + encode(Result(4, 0, 0, 0.0005)), 20.0)  # too short to tell
    assert end.jobs_shown == 1
    end.receive_data(encode(Result(5, 0, 0, 9.0)) + encode(Result(6, 0, 0, 8.0)), 29.5)  # 20.5..29.5 and 21.5..29.5
    assert end.jobs_shown == 2
    end.receive_data(encode(Result(7, 0, 0, 9.0)) + encode(Result(8, 0, 0, 9.0)), 30.0)  # 21..30, both: 4 at once
    assert end.jobs_shown == 4  # never more than the welcome's jobs


def test_a_worker_lying_about_its_kernels_time_is_believed_no_further_than_this_side_saw() -> None:
    """``elapsed_s`` is the worker's word. A worker of 4 jobs answering one sample at a time
    and claiming 1e300 s each (valid: finite, not negative) made every answer overlap
    every other, so it showed 4 jobs at once (and its slot's busy seconds added up to
    infinity); bounded by the time since each was sent, it shows 1, and each answer says
    what this side saw."""
    end = serving(jobs=4)
    for stream in range(4):
        sent = 10.0 * stream
        end.send_sample(1, stream, 0, "numpy", now=sent)
        [answered] = end.receive_data(encode(Result(stream + 1, 0, 0, 1e300)), sent + 9.0)
        assert isinstance(answered, Answered) and isinstance(answered.answer, Result)
        assert answered.answer.elapsed_s == 9.0
    assert end.jobs_shown == 1
    end.send_sample(1, 4, 0, "numpy", now=50.0)
    [answered] = end.receive_data(encode(Result(5, 0, 0, 2.5)), 59.0)  # an honest claim stays as it is
    assert isinstance(answered, Answered) and answered.answer == Result(5, 0, 0, 2.5)


def test_a_cancelled_request_still_ends_once_abandoned() -> None:
    end = serving()
    request_id = end.send_sample(1, 0, 10, "numpy", now=0.0, token="t")
    assert end.cancel(request_id) and not end.cancel(request_id)  # once
    [answered] = end.receive_data(encode(Error(request_id, ErrorCode.CANCELLED, "c")), 1.0)
    assert isinstance(answered, Answered) and answered.abandoned and answered.token == "t"
    assert end.in_flight == 0


# ------------------------------------------------------------------ the two ends wired up


class Link:
    """A coordinator end and a worker end, and the worker's kernels done by hand."""

    def __init__(self, jobs: int) -> None:
        self.coordinator = CoordinatorEnd(client="tests", task_budget=budget)
        self.worker = WorkerEnd(OFFER, jobs=jobs)
        self.running: list[int] = []
        self.stopping: set[int] = set()
        self.now = 0.0
        self.sent: dict[int, str] = {}
        self.ended: dict[str, int] = {}

    def note(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, Answered):
                self.ended[event.token] = self.ended.get(event.token, 0) + 1
            elif isinstance(event, Broken):
                for orphan in event.orphans:
                    self.ended[orphan.token] = self.ended.get(orphan.token, 0) + 1

    def to_worker(self) -> None:
        data = self.coordinator.data_to_send()
        if data and self.worker.state in (WorkerState.AWAIT_HELLO, WorkerState.SERVING):
            self.act(self.worker.receive_data(data))
        self.to_coordinator()

    def to_coordinator(self) -> None:
        data = self.worker.data_to_send()
        if data:
            self.note(self.coordinator.receive_data(data, self.now))

    def act(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, StartSample):
                self.running.append(event.request.id)
            elif isinstance(event, StopSample):
                self.stopping.add(event.request_id)

    def finish_one(self, cancelled: bool) -> None:
        if not self.running:
            return
        request_id = self.running.pop(0)
        if cancelled or request_id in self.stopping:
            events = self.worker.sample_failed(request_id, ErrorCode.CANCELLED, "stopped")
        else:
            events = self.worker.sample_finished(request_id, [0], 0.0)
        self.act(events)
        self.to_coordinator()


steps = st.lists(
    st.sampled_from(["sample", "ping", "cancel", "finish", "stop", "tick", "eof", "shutdown", "garbage"]),
    max_size=40,
)


@given(steps=steps, jobs=st.integers(1, 3))
@settings(max_examples=300, deadline=None)
def test_any_interleaving_ends_every_request_exactly_once(steps: list[str], jobs: int) -> None:
    link = Link(jobs)
    link.to_worker()  # hello, welcome
    assert link.coordinator.usable
    tokens = 0
    for step in steps:
        usable = link.coordinator.usable
        if step in ("sample", "ping") and usable:
            token = f"r{tokens}"
            tokens += 1
            if step == "sample":
                request_id = link.coordinator.send_sample(1, tokens, 0, "numpy", now=link.now, token=token)
            else:
                request_id = link.coordinator.send_ping(now=link.now, token=token)
            link.sent[request_id] = token
            link.to_worker()
        elif step == "cancel" and link.sent:
            link.coordinator.cancel(max(link.sent))
            link.to_worker()
        elif step in ("finish", "stop"):
            link.finish_one(cancelled=step == "stop")
        elif step == "tick":
            link.now += 7.0
            link.note(link.coordinator.advance(link.now))
        elif step == "eof":
            link.act(link.worker.receive_eof())
            link.to_coordinator()
        elif step == "shutdown":
            link.coordinator.shutdown()
            link.to_worker()
        elif step == "garbage":
            link.note(link.coordinator.receive_data(b"\x00\x00\x00\x01\xc1", link.now))
    # The worker finishes whatever it still runs; then the stream ends.
    while link.running:
        link.finish_one(cancelled=False)
    link.note(link.coordinator.receive_eof(link.now))
    link.note(link.coordinator.fail("the test is over"))
    assert set(link.ended) == set(link.sent.values())
    assert all(n == 1 for n in link.ended.values()), link.ended
    assert link.coordinator.in_flight == 0
    assert math.isinf(link.coordinator.next_deadline())


def test_the_welcome_says_the_implementations_offered_before_the_hello_and_no_others() -> None:
    """``WorkerEnd.offer_implementations`` replaces what the welcome will say of each
    kernel's implementation, checked by the welcome's own rules, until the hello: after it
    the welcome sent stays, and a tuple that is not one entry per kernel is refused with
    the offer as it was."""
    end = WorkerEnd(OFFER)
    with pytest.raises(ValueError, match="break the protocol"):
        end.offer_implementations(("numpy", "python"))  # two entries for one kernel
    with pytest.raises(ValueError, match="break the protocol"):
        end.offer_implementations(("x" * 100_000,))  # more than a welcome's text may hold
    assert end.offer.implementations == ()
    end.offer_implementations(("numba-fused",))
    end.receive_data(encode(Hello(versions=(1, 2), client="tests")))
    assert end.welcome is not None and end.welcome.implementations == ("numba-fused",)
    with pytest.raises(ValueError, match="has been sent"):
        end.offer_implementations(("numpy",))
    assert end.welcome.implementations == ("numba-fused",)
