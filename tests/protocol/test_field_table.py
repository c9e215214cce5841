"""The field table (``messages.FIELDS``): the one statement of what each field may hold.

``parse_message`` must accept a map exactly when every field obeys its rule in the
table, and refuse it naming the first field (in wire order) that does not, with that
rule's words: the same table decides both, for any map, hostile ones included (values
of the wrong msgpack type, out of range, at the limits, and Python values that msgpack
never produces but a direct caller may pass, such as a ``str`` subclass).
"""

from __future__ import annotations

import math
import re
from dataclasses import fields
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpi_worker.protocol import (
    COORDINATOR_MESSAGES,
    HEADER,
    MAX_GROUPS,
    MAX_LIST,
    MAX_POINTS,
    MAX_TEXT,
    OPTIONAL_FIELDS,
    UINT64_MAX,
    WORKER_MESSAGES,
    Message,
    RequestError,
    WorkerEnd,
    WorkerOffer,
    encode,
    parse_message,
)
from mcpi_worker.protocol.messages import _PARSERS, FIELDS, _parse_fields, parse_own_fields


class Text(str):
    """A ``str`` that is not exactly a ``str``: msgpack never decodes to it."""


class Array(list[Any]):
    """A ``list`` that is not exactly a ``list``."""


_INTS = (0, 1, 2, MAX_POINTS, MAX_POINTS + 1, UINT64_MAX, UINT64_MAX + 1, -1)
_SCALARS: tuple[Any, ...] = (
    *_INTS, True, False, None, 0.0, 1.5, -0.5, math.nan, math.inf, "", "numpy", "x" * MAX_TEXT,
    "x" * (MAX_TEXT + 1), Text("numpy"), b"numpy", {},
)  # fmt: skip

scalars = st.sampled_from(_SCALARS) | st.integers(-(2**70), 2**70)
arrays = st.one_of(
    st.lists(st.sampled_from(_INTS) | st.sampled_from((True, None, "a")), max_size=5),
    st.lists(st.sampled_from(("numpy", "python", "")), max_size=5),
    st.lists(st.sampled_from(_SCALARS), max_size=5),
    st.sampled_from(_INTS[:6]).map(lambda n: [n] * (MAX_LIST + 1)),
    st.just([1] * (MAX_GROUPS + 1)),
    st.just(["x" * (MAX_TEXT + 1)]),
    st.lists(st.integers(1, 3), min_size=1, max_size=3).map(Array),
)
values = scalars | arrays
_SUBCLASSED: tuple[Any, ...] = (Text("numpy"), Text(""), Array([1]), Array(["numpy"]), Array([0, 1]))
_POOL: tuple[Any, ...] = (*_SCALARS, [1], [1, 2], ["numpy"], ["numpy", "python"], [0, 7, 3], [])
_ABSENT = object()


@st.composite
def bodies(draw: st.DrawFn, accept: dict[str, type[Message]]) -> tuple[type[Message], dict[str, Any]]:
    """A map of one accepted type: each field absent, valid or any value; or every
    field valid; or every field valid but one, which is hostile (a near miss, where
    precedence and the check of that one field decide)."""
    kind = draw(st.sampled_from(sorted(accept)))
    cls = accept[kind]
    rules = FIELDS[cls]
    body: dict[str, Any] = {"type": kind}
    for name, rule in rules.items():
        good = st.sampled_from([v for v in _POOL if rule.valid(v)])
        choices = {"absent": st.just(_ABSENT), "good": good, "any": values}
        value = draw(choices[draw(st.sampled_from(["absent", "good", "good", "any"]))])
        if value is not _ABSENT:
            body[name] = value
    mode = draw(st.sampled_from(["random", "valid", "near miss"]))
    if rules and mode != "random":
        for name, rule in rules.items():
            body[name] = draw(st.sampled_from([v for v in _POOL if rule.valid(v)]))
        if mode == "near miss":
            spoilt = draw(st.sampled_from(sorted(rules)))
            body[spoilt] = draw(st.sampled_from(_SUBCLASSED) | values)
    return cls, body


def first_problem(cls: type[Message], body: dict[str, Any]) -> str | None:
    """What the table says is wrong with ``body`` (the first field that breaks its rule)."""
    for name, rule in FIELDS[cls].items():
        if name not in body:
            if name not in OPTIONAL_FIELDS[cls]:
                return f"{cls.TYPE}: missing field {name!r}"
        elif not rule.valid(body[name]):
            return f"{cls.TYPE}: {name!r} {rule.expects}"
    return None


@pytest.mark.parametrize("accept", [COORDINATOR_MESSAGES, WORKER_MESSAGES], ids=["worker", "coordinator"])
@given(data=st.data())
def test_acceptance_and_refusal_both_follow_the_table(accept: dict[str, type[Message]], data: st.DataObject) -> None:
    cls, body = data.draw(bodies(accept))
    expected = first_problem(cls, body)
    try:
        message = parse_message(body, accept)
    except RequestError as error:
        assert error.message == expected
        return
    assert expected is None
    for name, rule in FIELDS[cls].items():
        value = body.get(name, OPTIONAL_FIELDS[cls].get(name))
        assert getattr(message, name) == (value if rule.convert is None or name not in body else rule.convert(value))


@pytest.mark.parametrize("accept", [COORDINATOR_MESSAGES, WORKER_MESSAGES], ids=["worker", "coordinator"])
@given(data=st.data())
def test_parse_message_raises_only_request_error(accept: dict[str, type[Message]], data: st.DataObject) -> None:
    # Python values msgpack never decodes to (a str or list subclass) must be refused
    # like any wrong type, not trip an internal check.
    _, body = data.draw(bodies(accept))
    try:
        parse_message(body, accept)
    except RequestError:
        pass


@pytest.mark.parametrize("accept", [COORDINATOR_MESSAGES, WORKER_MESSAGES], ids=["worker", "coordinator"])
@given(data=st.data())
def test_each_class_s_unrolled_parser_agrees_with_the_field_loop(
    accept: dict[str, type[Message]], data: st.DataObject
) -> None:
    # parse_message builds a valid message with its class's unrolled parser, made from
    # the table, and runs the loop over the table only to say what is wrong: the two
    # must take the same maps and build the same messages (types included: an int
    # where the rule converts to float, say).
    cls, body = data.draw(bodies(accept))
    unrolled = _PARSERS[cls](body)
    try:
        looped = _parse_fields(cls, body, accept)
    except RequestError:
        assert unrolled is None
        return
    assert unrolled == looped
    assert [type(getattr(unrolled, name)) for name in FIELDS[cls]] == [
        type(getattr(looped, name)) for name in FIELDS[cls]
    ]


@pytest.mark.parametrize("accept", [COORDINATOR_MESSAGES, WORKER_MESSAGES], ids=["worker", "coordinator"])
@given(data=st.data(), extra=st.sampled_from([None, ("extra", 1), ("extra", [1, {"a": 2}]), ("kernels", ["x"])]))
def test_a_map_of_its_own_keys_alone_is_parsed_as_parse_message_parses_it(
    accept: dict[str, type[Message]], data: st.DataObject, extra: tuple[str, Any] | None
) -> None:
    # The batched decoder takes a message by parse_own_fields without the plain-data
    # scan: only a map whose keys are all its message's own, and then exactly as
    # parse_message would; any other map is left to parse_message (None here).
    cls, body = data.draw(bodies(accept))
    if extra is not None and extra[0] not in FIELDS[cls]:
        body[extra[0]] = extra[1]
    own = parse_own_fields(body, accept)
    try:
        parsed = parse_message(body, accept)
    except RequestError:
        assert own is None
        return
    assert own == (parsed if set(body) <= {"type", *FIELDS[cls]} else None)


@pytest.mark.parametrize("accept", [COORDINATOR_MESSAGES, WORKER_MESSAGES], ids=["worker", "coordinator"])
@given(data=st.data())
def test_a_message_is_sent_as_the_map_the_field_table_says(
    accept: dict[str, type[Message]], data: st.DataObject
) -> None:
    # encode's unrolled map of each class against the table read field by field: type,
    # then each field in wire order, an optional one left out at the value its absence
    # means; arrays as lists.
    cls, body = data.draw(bodies(accept))
    try:
        message = parse_message(body, accept)
    except RequestError:
        return
    expected: dict[str, Any] = {"type": cls.TYPE}
    for name in FIELDS[cls]:
        value = getattr(message, name)
        if name in OPTIONAL_FIELDS[cls] and value == OPTIONAL_FIELDS[cls][name]:
            continue
        expected[name] = list(value) if isinstance(value, tuple) else value
    payload = msgpack.packb(expected, use_bin_type=True)
    assert encode(message) == HEADER.pack(len(payload)) + payload


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"type": "hello", "versions": [1], "client": Text("me")}, "hello: 'client' must be a string"),
        ({"type": "hello", "versions": Array([1]), "client": "me"}, "hello: 'versions' must be a non-empty array"),
        ({"type": "sample", "id": 1, "seed": 0, "stream": 0, "points": 0, "kernel": Text("numpy")},
         "sample: 'kernel' must be a string"),
    ],
)  # fmt: skip
def test_python_subclasses_are_refused_with_the_rules_words(body: dict[str, Any], why: str) -> None:
    with pytest.raises(RequestError, match=f"^{why}"):
        parse_message(body, COORDINATOR_MESSAGES)


def test_every_message_field_has_one_rule_in_wire_order() -> None:
    for cls in (*COORDINATOR_MESSAGES.values(), *WORKER_MESSAGES.values()):
        assert tuple(FIELDS[cls]) == tuple(f.name for f in fields(cls))


@pytest.mark.parametrize(
    ("offer", "jobs", "why"),
    [
        ({"host": "h" * (MAX_TEXT + 1)}, 1, f"welcome: 'host' must be a string of at most {MAX_TEXT} characters"),
        ({"worker": Text("w")}, 1, "welcome: 'worker' must be a string"),
        ({"max_points": MAX_POINTS + 1}, 1, "welcome: 'max_points' must be an integer from 1 to"),
        ({"max_frame": 0}, 1, "welcome: 'max_frame' must be a positive integer"),
        ({"max_inflight": 4}, 5, "announced 5 jobs, more than its max_inflight 4"),
        ({"implementations": ("a", "b")}, 1, "named 2 implementations for 1 kernels"),
    ],
)  # fmt: skip
def test_a_worker_s_end_refuses_an_offer_whose_welcome_its_peer_would_refuse(
    offer: dict[str, Any], jobs: int, why: str
) -> None:
    # The same table (and Welcome.problem) the coordinator judges the welcome by.
    with pytest.raises(ValueError, match=re.escape(why)):
        WorkerEnd(WorkerOffer(**{"worker": "w", "pid": 1, "host": "h", "kernels": ("numpy",),
                                 "max_inflight": 4, **offer}), jobs=jobs)  # fmt: skip
