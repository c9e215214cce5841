"""The fused kernel for a range of streams: stream set-up compiled too, counts unchanged.

``fused_range.count_streams`` seeds each stream in compiled code (protocol.md §11.1–11.2
spelled out, rather than NumPy's SeedSequence) and counts it with ``fused``'s loop: every
stream's count must be exactly NumPy's.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcpi_worker.kernels import Cancelled, fused_range, numpy_impl


@given(
    seed=st.integers(0, 2**64 - 1),
    first=st.integers(0, 2**64 - 1),
    streams=st.integers(1, 6),
    points=st.integers(0, 3000),
)
@example(seed=0, first=0, streams=3, points=1000)
@example(seed=2**64 - 1, first=2**32 - 2, streams=4, points=7)  # stream words 1 -> 2
@example(seed=2**32, first=2**64 - 3, streams=3, points=1)
@settings(max_examples=80, deadline=None)
def test_each_stream_counts_as_numpy_counts_it(seed: int, first: int, streams: int, points: int) -> None:
    streams = min(streams, 2**64 - first)
    expected = [numpy_impl.count(seed, first + i, points) for i in range(streams)]
    assert fused_range.count_streams(seed, first, streams, points) == expected


def test_long_streams_and_many_calls_agree_too() -> None:
    # Above POINTS_PER_CALL a stream goes on its own; below it, calls hold several.
    long = fused_range.POINTS_PER_CALL + 3
    assert fused_range.count_streams(5, 9, 2, long) == [numpy_impl.count(5, 9 + i, long) for i in range(2)]
    many = fused_range.POINTS_PER_CALL // 1000 * 3 + 1  # four calls of 1000-point streams
    counts = fused_range.count_streams(5, 0, many, 1000)
    assert counts[::500] == [numpy_impl.count(5, s, 1000) for s in range(0, many, 500)]


def test_a_stop_between_calls_cancels() -> None:
    calls = 0

    def stop_on_second_look() -> bool:
        nonlocal calls
        calls += 1
        return calls > 1

    with pytest.raises(Cancelled):
        fused_range.count_streams(5, 0, 10_000, 1000, stop_on_second_look)
    assert calls == 2
