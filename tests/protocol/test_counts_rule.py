"""The rule of a range's counts per group (``insides``: at most ``MAX_GROUPS`` integers from
0 to 2**64-1, not bool) is checked in C loops; it must take and refuse exactly what the
rule's plain statement, one ``is_uint64`` per count, takes and refuses. These pin what the
quick form must keep (they hold for the plain statement too), and the frame check beside
it: a list of scalars is plain data, a list holding anything else is looked into."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpi_worker.protocol import MAX_GROUPS, UINT64_MAX, FatalProtocolError, FrameDecoder, Ping
from mcpi_worker.protocol.framing import _plain_data_problem
from mcpi_worker.protocol.messages import FIELDS, Result, is_uint64

COUNTS = FIELDS[Result]["insides"]


def _plainly(value: Any) -> bool:
    return type(value) is list and len(value) <= MAX_GROUPS and all(map(is_uint64, value))


EDGES = [
    [], [0], [UINT64_MAX], [UINT64_MAX + 1], [-1], [0, -1], [True], [False, 0], [1.0], [0, "1"],
    [None], [[0]], [0] * MAX_GROUPS, [0] * (MAX_GROUPS + 1), (0, 1), "0", None, {0: 0}, [2**70], [-(2**70)],
]  # fmt: skip


@pytest.mark.parametrize("value", EDGES, ids=repr)
def test_the_counts_rule_takes_exactly_what_one_is_uint64_per_count_takes(value: Any) -> None:
    assert COUNTS.valid(value) is _plainly(value)


count = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65), st.booleans(), st.floats(allow_nan=False), st.none(), st.text()
)


@given(st.lists(count, max_size=40))
def test_the_counts_rule_agrees_with_its_plain_statement(value: list[Any]) -> None:
    assert COUNTS.valid(value) is _plainly(value)


class _Ext:
    """Not plain data: what a msgpack extension type could decode to."""


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        ([0, 1, 2**64 - 1, -5, 1.5, "x", b"y", None, True], True),
        ([0, [1, [2]]], True),
        ([0, _Ext()], False),
        ([0, [1, _Ext()]], False),
        ([0, {"k": _Ext()}], False),
        ([0, {b"k": 1}], False),
    ],
)
def test_a_list_of_scalars_is_plain_and_anything_inside_a_list_is_looked_into(value: list[Any], plain: bool) -> None:
    assert (_plain_data_problem({"insides": value}, depth=1) is None) is plain


def test_a_list_of_scalars_too_deep_is_still_refused() -> None:
    deep: Any = [0]
    for _ in range(16):
        deep = [deep]
    assert _plain_data_problem({"insides": deep}, depth=1) is not None
    decoder = FrameDecoder(frozenset({Ping}))
    body = msgpack.packb({"type": "ping", "id": 1, "x": deep})
    decoder.feed(len(body).to_bytes(4, "big") + body)
    with pytest.raises(FatalProtocolError, match="nested deeper"):
        decoder.next_message()
