"""Differential fuzzing: one conversation, two workers written apart (the real
``mcpi-worker`` and the C peer written from protocol.md alone, ``test_c_peer.py``).

Hypothesis writes conversations of hellos, samples, pings, cancels, messages of unknown
or missing types and raw bodies, each field valid, missing or of a hostile value (a
boolean, a float, a negative or too large integer, nil, a str, bin, an array, a map).
§8's precedence makes every error deterministic, so both workers must give each request
the same error code, end with the same fatal code (or none) and the same exit status,
and count the same ``inside`` wherever both give a result. What depends on timing is not
compared: a sample may be answered by its ``result`` or ``cancelled`` at the end of
input (§9), or not at all after a fatal error (§5).

``MCPI_FUZZ_EXAMPLES`` sets how many conversations (default 25: a few seconds in CI;
thousands for a search).
"""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

REAL_WORKER = [sys.executable, "-P", "-m", "mcpi_worker"]
UINT64_MAX = 2**64 - 1
LAST_PING = UINT64_MAX  # a final ping: all input before it has been read when it is answered

hostile_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), -1), st.integers(2**40, UINT64_MAX),
    st.sampled_from([0, 1, 2**40, 2**40 + 1, 2**20, 2**20 + 1, 4096, 4097, UINT64_MAX]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4), st.binary(max_size=3),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(0, 2), max_size=1),
)  # fmt: skip
MISSING = object()


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid three times in five, else missing or hostile (a plain one_of would flatten
    ``hostile_values``'s ten choices into its own and draw a valid value rarely)."""
    return st.integers(0, 4).flatmap(lambda choice: (valid, valid, valid, st.just(MISSING), hostile_values)[choice])


def request_id() -> st.SearchStrategy[Any]:
    """Valid nine times in ten: a request without a usable id ends the conversation (§6)."""
    return st.integers(0, 9).flatmap(
        lambda choice: field(st.integers(1, 2**32)) if choice == 0 else st.integers(1, 2**32)
    )


def message(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(fields).map(lambda m: {k: v for k, v in m.items() if v is not MISSING})


HELLO = {"type": "hello", "versions": [1, 2], "client": "fuzz"}
kernels = st.sampled_from(["numpy", "python", "numpy", "cuda", ""])
hello = message(
    type=st.just("hello"),
    versions=field(st.lists(st.sampled_from([1, 2, 3]), min_size=1, max_size=3)),
    client=field(st.just("fuzz")),
    expected_points=field(st.integers(0, 2**20)),
)
sample = message(
    type=st.just("sample"), id=request_id(), seed=field(st.integers(0, UINT64_MAX)),
    stream=field(st.integers(0, UINT64_MAX)), points=field(st.integers(0, 300)), kernel=field(kernels),
    streams=field(st.integers(1, 5)), group=field(st.integers(1, 6)),
)  # fmt: skip
ping = message(type=st.just("ping"), id=request_id())
cancel = message(type=st.just("cancel"), id=request_id())
other = message(
    type=st.one_of(st.sampled_from(["frobnicate", "result", "welcome", "pong", "error"]), hostile_values),
    id=request_id(),
)
raw_body = st.binary(min_size=1, max_size=12)
KINDS: tuple[st.SearchStrategy[Any], ...] = (*[sample] * 6, ping, cancel, other, hello, raw_body)
"""What each message of a conversation is, drawn evenly: a second hello and most raw bodies
are fatal, and end the conversation, so they are a few."""
conversation = st.tuples(
    st.integers(0, 4).flatmap(lambda choice: hello if choice == 0 else st.just(HELLO)).map(lambda h: [h]),
    st.lists(st.integers(0, len(KINDS) - 1).flatmap(lambda kind: KINDS[kind]), min_size=4, max_size=16),
)


def frame(item: dict[str, Any] | bytes) -> bytes:
    body = item if isinstance(item, bytes) else msgpack.packb(item)
    return struct.pack(">I", len(body)) + body


def converse(command: list[str], frames: bytes) -> tuple[list[dict[str, Any]], int]:
    run = subprocess.run(command, input=frames, capture_output=True, timeout=120, check=False)
    assert b"Traceback" not in run.stderr, run.stderr.decode(errors="replace")
    answers, at = [], 0
    while at < len(run.stdout):
        (length,) = struct.unpack_from(">I", run.stdout, at)
        answers.append(msgpack.unpackb(run.stdout[at + 4 : at + 4 + length]))
        at += 4 + length
    return answers, run.returncode


def summary(answers: list[dict[str, Any]]) -> tuple[str | None, dict[int, str], dict[int, int]]:
    """(fatal code, {id: error code other than cancelled}, {id: inside of a result})."""
    fatal = next((a["code"] for a in answers if a["type"] == "error" and a["id"] is None), None)
    errors = {a["id"]: a["code"] for a in answers if a["type"] == "error" and a["id"] is not None}
    results = {a["id"]: a["inside"] for a in answers if a["type"] == "result"}
    return fatal, {i: c for i, c in errors.items() if c != "cancelled"}, results


def unique_ids(items: list[dict[str, Any] | bytes]) -> None:
    """Give each request whose id is an integer one no other request has."""
    seen: set[int] = set()
    for item in items:
        if isinstance(item, dict) and item.get("type") in ("sample", "ping") and type(item.get("id")) is int:
            while item["id"] in seen:
                item["id"] = (item["id"] + 2**33) % UINT64_MAX
            seen.add(item["id"])


@settings(
    max_examples=int(os.environ.get("MCPI_FUZZ_EXAMPLES", "25")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)  # fmt: skip
@given(conversation)
def test_the_real_worker_and_the_c_peer_answer_any_conversation_alike(
    c_peer: Path, case: tuple[list[dict[str, Any]], list[dict[str, Any] | bytes]]
) -> None:
    greeting, rest = case
    items = [*greeting, *rest, {"type": "ping", "id": LAST_PING}]
    unique_ids(items)  # whether a repeated id is still outstanding depends on timing
    frames = b"".join(frame(item) for item in items)
    real, real_exit = converse(REAL_WORKER, frames)
    peer, peer_exit = converse([str(c_peer), "worker"], frames)
    real_fatal, real_errors, real_results = summary(real)
    peer_fatal, peer_errors, peer_results = summary(peer)
    context = (items, real, peer)
    assert (real_exit, real_fatal) == (peer_exit, peer_fatal), context
    assert real_errors == peer_errors, context
    for request, inside in real_results.items():
        assert peer_results.get(request, inside) == inside, context
    for answer in real:
        if answer["type"] == "error":
            assert "\n" not in answer["message"] and not answer["message"].endswith(": "), answer
        if answer["type"] == "result":
            assert math.isfinite(answer["elapsed_s"]) and answer["elapsed_s"] >= 0, answer
