"""Can this worker take this sample: one rule (``protocol.admission``), held by every party.

The worker's end refuses by it, the coordinator's end never sends what it refuses, and
the pool's dispatcher routes by it; the dispatcher's quick forms (a plain sample on a
worker whose frames fit any, the most streams of a piece) must never say otherwise than
the full rule, for any welcome and any sample, hostile ones included.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.dispatch import Request, _problem, _serves
from mcpi_worker.protocol import (
    HEADER,
    MAX_FRAME,
    MAX_GROUPS,
    MAX_POINTS,
    MAX_STREAMS,
    UINT64_MAX,
    WORKER_MESSAGES,
    CoordinatorEnd,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    LocalProtocolError,
    Sample,
    Welcome,
    WorkerEnd,
    WorkerOffer,
    encode,
)
from mcpi_worker.protocol.admission import (
    PLAIN_SAMPLE_FRAME,
    most_streams,
    plain_verdict,
    refusal,
    sample_problem,
    sending_problem,
)

LONG_KERNEL = "k" * 1000
"""A name a worker may offer (up to 4096 characters): its plain samples' frames are over 1 KB."""
WIDE_KERNEL = "\U0001f600" * 300
"""Four bytes a character in UTF-8."""

kernels = st.sampled_from(["numpy", "python", "", LONG_KERNEL, WIDE_KERNEL])
edges = st.sampled_from([0, 1, 2, 7, 1000, 4096, 4097, MAX_STREAMS, MAX_POINTS, UINT64_MAX - 3, UINT64_MAX])
uint64 = edges | st.integers(0, UINT64_MAX)
max_frames = st.sampled_from([40, 200, 1024, 1100, 4000, PLAIN_SAMPLE_FRAME - 1, PLAIN_SAMPLE_FRAME, MAX_FRAME])
max_points = st.sampled_from([1, 10, 1000, 4096, MAX_POINTS]) | st.integers(1, MAX_POINTS)


@st.composite
def welcomes(draw: st.DrawFn, frames: st.SearchStrategy[int] = max_frames) -> Welcome:
    offered = tuple(dict.fromkeys(draw(st.lists(kernels, min_size=1, max_size=3))))
    return Welcome(
        version=draw(st.sampled_from([1, 2])), worker="w", pid=1, host="h", kernels=offered,
        max_inflight=4, max_frame=draw(frames), max_points=draw(max_points),
    )  # fmt: skip


@st.composite
def samples(draw: st.DrawFn, plain: bool = False) -> Sample:
    streams, group = 1, None
    if not plain:
        streams = draw(st.integers(1, 5000) | edges.filter(bool))
        group = draw(st.none() | st.integers(1, 5) | edges.filter(bool))
    points = draw(st.integers(0, 10_000) | edges.filter(lambda n: n <= MAX_POINTS))
    return Sample(0, draw(uint64), draw(uint64), points, draw(kernels), streams, group)


@given(welcomes(), samples(plain=True))
def test_the_quick_verdict_on_a_plain_sample_is_the_full_rule_s(welcome: Welcome, sample: Sample) -> None:
    verdict = plain_verdict(welcome, sample.kernel, sample.points)
    assert verdict is None or verdict == (sending_problem(welcome, sample) is None)
    assert (verdict is None) == (welcome.max_frame < PLAIN_SAMPLE_FRAME)


@given(welcomes(), samples())
def test_the_most_streams_of_a_piece_are_what_the_rule_allows(welcome: Welcome, sample: Sample) -> None:
    most = most_streams(welcome, sample.stream, sample.points)
    assert 0 <= most <= MAX_GROUPS

    def allowed(streams: int) -> bool:
        piece = Sample(0, sample.seed, sample.stream, sample.points, welcome.kernels[0],
                       streams, 1 if streams != 1 else None)  # fmt: skip
        return refusal(welcome, piece) is None

    assert most == 0 or allowed(most)
    assert not allowed(most + 1)


@given(welcomes(), samples(plain=True) | samples(), st.booleans())
@example(  # a plain sample of a kernel with a long name, on a worker taking frames of 1 KB
    Welcome(2, "w", 1, "h", (LONG_KERNEL,), 4, 1024, MAX_POINTS), Sample(0, 1, 2, 3, LONG_KERNEL), False
)
def test_the_dispatcher_s_quick_path_agrees_with_its_full_check(welcome: Welcome, sample: Sample, split: bool) -> None:
    assume(sample_problem(sample) is None)  # else no Chunk can be made of it (tests/pool/test_chunk_fields.py)
    chunk = Chunk(sample.seed, sample.stream, sample.points, sample.kernel, sample.streams)
    request = Request(chunk, lambda request, outcome: None, splitter=(lambda r, n: r) if split else None)
    assert _serves(welcome, 0, request) == (_problem(welcome, chunk, splittable=split) is None)


def handshake(welcome: Welcome) -> tuple[CoordinatorEnd, WorkerEnd]:
    offer = WorkerOffer(worker="w", pid=1, host="h", kernels=welcome.kernels, max_inflight=4,
                        max_points=welcome.max_points, max_frame=welcome.max_frame)  # fmt: skip
    worker = WorkerEnd(offer)
    worker.receive_data(encode(Hello(versions=(welcome.version,), client="t")))
    coordinator = CoordinatorEnd(client="t", task_budget=lambda work: 60.0, versions=(welcome.version,))
    coordinator.data_to_send()
    coordinator.receive_data(worker.data_to_send(), now=0.0)
    assert coordinator.usable
    return coordinator, worker


def worker_answer(worker: WorkerEnd, body: dict[str, Any]) -> str:
    """What the worker does with ``body``: 'started', or the code it refuses it with."""
    payload = msgpack.packb(body)
    events = worker.receive_data(HEADER.pack(len(payload)) + payload)
    if events and type(events[0]).__name__ == "StartSample":
        return "started"
    decoder = FrameDecoder(WORKER_MESSAGES)
    decoder.feed(worker.data_to_send())
    answer = decoder.next_message()
    assert isinstance(answer, Error), answer
    return str(answer.code)


hostile = st.sampled_from([-1, 2**64, UINT64_MAX, 0, 2**63]) | st.integers(-(2**63), UINT64_MAX)
small = st.integers(0, 1000)
mostly_small = st.one_of(small, small, small, hostile)


@settings(max_examples=300)
@given(welcomes(st.one_of(st.just(MAX_FRAME), max_frames)),
       st.tuples(mostly_small, mostly_small, mostly_small, st.one_of(st.just("numpy"), kernels),
                 st.one_of(st.just(1), st.integers(1, 5), hostile),
                 st.one_of(st.none(), st.none(), st.integers(1, 3), hostile)))  # fmt: skip
def test_the_coordinator_sends_exactly_what_the_worker_takes(welcome: Welcome, fields: tuple[Any, ...]) -> None:
    seed, stream, points, kernel, streams, group = fields
    coordinator, worker = handshake(welcome)
    try:
        coordinator.send_sample(seed, stream, points, kernel, streams=streams, group=group, now=0.0)
    except LocalProtocolError:
        sent = False
    else:
        sent = True
    body = {"type": "sample", "id": 1, "seed": seed, "stream": stream, "points": points, "kernel": kernel}
    if streams != 1:
        body["streams"] = streams
    if group is not None:
        body["group"] = group
    try:
        answer = worker_answer(worker, body)
    except OverflowError:
        answer = "cannot be framed"  # msgpack has no integer above 2**64-1
    if sent:
        assert answer == "started"
    else:
        assert answer in {ErrorCode.INVALID_REQUEST, ErrorCode.UNKNOWN_KERNEL, ErrorCode.FRAME_TOO_LARGE,
                          "cannot be framed"}, answer  # fmt: skip
