"""Hypothesis against the coordinator's checks of a worker's answers (protocol.md §5, §6.1,
§8), sans-IO: ``CoordinatorEnd`` fed any welcome and any answers a hostile worker could
write, valid or not, split at any points.

Whatever arrives, and whatever the coordinator's own side does between two reads (cancel
requests, shut down, see its stall clock ring, give up on the worker), the coordinator
raises nothing, and every request it sent ends exactly once: answered (marked abandoned
if, and only if, it was cancelled), or handed back as an orphan when the connection
breaks; nothing is answered after the break. An answer it accepts keeps every rule of §5 and §6.1 (its
request's points, ``inside`` at most them, one count per group adding up to ``inside``).
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpi_worker.protocol import Error, LocalProtocolError, Pong, Result
from mcpi_worker.protocol.coordinator_end import Answered, Broken, CoordinatorEnd, Welcomed

UINT64_MAX = 2**64 - 1
KERNELS = ["numpy", "python"]

hostile = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), UINT64_MAX), st.floats(), st.text(max_size=3),
    st.binary(max_size=2), st.lists(st.integers(0, 5), max_size=3),
)  # fmt: skip


MISSING = object()


def spoiled(draw: st.DrawFn, fields: dict[str, Any], keep: tuple[str, ...] = ("type",)) -> dict[str, Any]:
    """``fields`` as they are half the time; else one of them (not in ``keep``) left out
    or given a hostile value."""
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(set(fields) - set(keep))))
        fields = {**fields, key: draw(st.one_of(st.just(MISSING), hostile))}
    return {key: value for key, value in fields.items() if value is not MISSING}


def welcome_of(draw: st.DrawFn) -> dict[str, Any]:
    max_inflight = draw(st.integers(1, 8))
    fields = {
        "type": "welcome", "version": draw(st.sampled_from([1, 2])), "worker": "fuzz", "pid": 1, "host": "h",
        "kernels": KERNELS, "max_inflight": max_inflight, "max_frame": 2**20, "max_points": 2**40,
        "jobs": draw(st.integers(1, max_inflight)), "implementations": draw(st.sampled_from([[], ["a", "b"]])),
    }  # fmt: skip
    return spoiled(draw, fields) if draw(st.integers(0, 4)) == 0 else fields


def answer_of(draw: st.DrawFn, sent: dict[int, tuple[int, int | None, int]]) -> dict[str, Any] | bytes:
    """One message from the worker, about a request it was sent (or another id)."""
    request_id = draw(st.sampled_from(sorted(sent))) if sent and draw(st.integers(0, 5)) else draw(st.integers(0, 9))
    points, groups, streams = sent.get(request_id, (1000, None, 1))
    kind = draw(st.sampled_from(["result"] * 5 + ["pong", "error", "welcome", "raw", "other"]))
    if kind == "raw":
        return draw(st.binary(min_size=1, max_size=10))
    if kind == "welcome":
        return welcome_of(draw)
    if kind == "pong":
        return spoiled(draw, {"type": "pong", "id": request_id})
    if kind == "error":
        code = draw(st.sampled_from(["cancelled", "busy", "internal", "malformed_frame", "new_code"]))
        fields = {"type": "error", "id": draw(st.sampled_from([request_id, None])), "code": code, "message": "m"}
        return spoiled(draw, fields)
    if kind == "other":
        return {"type": draw(st.sampled_from(["hello", "sample", "frob"])), "id": request_id}
    total = points * streams
    inside = draw(st.integers(0, total) | st.integers(total, total + 2))
    fields = {
        "type": "result", "id": request_id, "inside": inside,
        "points": draw(st.sampled_from([total, total, total, total + 1])),
        "elapsed_s": draw(st.floats(0, 1e9) | st.integers(0, 10)),
    }  # fmt: skip
    count = groups if groups is not None else draw(st.sampled_from([MISSING] * 9 + [1]))
    if count is not MISSING:
        parts = draw(st.lists(st.integers(0, max(total, 1)), min_size=count, max_size=count))
        if draw(st.booleans()):  # counts that add up
            parts = [inside // count] * (count - 1) + [inside - (inside // count) * (count - 1)]
        fields["insides"] = draw(st.sampled_from([parts, parts, parts[:-1], [*parts, 0]]))
    return spoiled(draw, fields) if draw(st.integers(0, 3)) == 0 else fields


def frame(message: dict[str, Any] | bytes) -> bytes:
    body = message if isinstance(message, bytes) else msgpack.packb(message)
    return struct.pack(">I", len(body)) + body


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


@settings(max_examples=int(os.environ.get("MCPI_FUZZ_EXAMPLES", "400")), deadline=None)
@given(st.data())
def test_any_answers_end_every_request_exactly_once_and_only_valid_ones_count(data: st.DataObject) -> None:
    end = CoordinatorEnd(client="fuzz", task_budget=lambda work: 30.0)
    end.data_to_send()
    events = end.receive_data(frame(data.draw(st.composite(welcome_of)())), now=0.0)
    ended: dict[Any, int] = {}
    sent: dict[int, tuple[int, int | None, int]] = {}  # id: (points, groups, streams)
    broken = False
    if end.usable:
        assert end.welcome is not None
        for number in range(data.draw(st.integers(0, 6))):
            if not end.welcome.kernels or data.draw(st.integers(0, 4)) == 0:  # none offered: pings only
                sent[end.send_ping(now=0.0, token=number)] = (0, None, 1)
                continue
            points, streams, group = data.draw(st.integers(0, 5000)), 1, None
            if end.welcome.version >= 2 and data.draw(st.booleans()):
                streams, group = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 7))
            groups = None if group is None else -(-streams // min(group, streams))
            kernel = data.draw(st.sampled_from(end.welcome.kernels))
            try:
                request_id = end.send_sample(7, 3, points, kernel, streams=streams, group=group, now=0.0, token=number)
            except LocalProtocolError:  # one the welcome rules out (a small max_points, say): never sent
                continue
            sent[request_id] = (points, groups, streams)
    answers = data.draw(st.lists(st.composite(answer_of)(sent), max_size=10))
    chunks = split(b"".join(frame(answer) for answer in answers), data.draw(st.lists(st.integers(0, 400))))
    cancelled: set[int] = set()
    now = 1.0
    for chunk in chunks:
        # What the coordinator's side may do between two reads: give requests up, shut
        # down, see its stall clock ring (a little or long after the last answer), give up.
        for action in data.draw(st.lists(st.sampled_from(["none"] * 6 + ["cancel", "shutdown", "tick", "fail"]))):
            if action == "cancel" and sent:
                request_id = data.draw(st.sampled_from(sorted(sent)))
                if end.cancel(request_id):
                    cancelled.add(request_id)
            elif action == "shutdown":
                end.shutdown()
            elif action == "tick":
                now += data.draw(st.sampled_from([0.5, 29.0, 31.0, 1e6]))
                events += end.advance(now)
            elif action == "fail":
                events += end.fail("given up on")
        events += end.receive_data(chunk, now=now)
    events += end.receive_eof(now=now + 1.0)
    for event in events:
        assert not broken, ("an event after the connection broke", events)
        if isinstance(event, Broken):
            broken = True
            assert event.reason and "\n" not in event.reason
            for orphan in event.orphans:
                ended[orphan.token] = ended.get(orphan.token, 0) + 1
        elif isinstance(event, Answered):
            ended[event.token] = ended.get(event.token, 0) + 1
            assert event.abandoned == (event.request_id in cancelled), event
            points, groups, streams = sent[event.request_id]
            answer = event.answer
            assert isinstance(answer, Result | Pong | Error)
            if isinstance(answer, Result):
                assert answer.points == points * streams and answer.inside <= answer.points
                assert math.isfinite(answer.elapsed_s) and answer.elapsed_s >= 0
                if groups is None:
                    assert answer.insides is None
                else:
                    assert answer.insides is not None and len(answer.insides) == groups
                    assert sum(answer.insides) == answer.inside
        else:
            assert isinstance(event, Welcomed)
    # The stream ended: every request sent has ended, exactly once.
    assert sorted(ended.values()) == [1] * len(sent), (ended, sent, events)
