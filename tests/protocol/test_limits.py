"""The frame-size limit and a range's groups: each stated once in the protocol package
(``framing.frame_problem``, ``Sample.group_streams``), and every party held to it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpi_worker.protocol import (
    COORDINATOR_MESSAGES,
    HEADER,
    MAX_FRAME,
    ErrorCode,
    FatalProtocolError,
    FrameDecoder,
    Sample,
)
from mcpi_worker.protocol.framing import frame_problem


@pytest.mark.parametrize("max_frame", [40, MAX_FRAME, MAX_FRAME + 1, 1 << 30])
def test_no_decoder_takes_a_frame_above_the_limit_whatever_its_receiver_announced(max_frame: int) -> None:
    limit = min(max_frame, MAX_FRAME)
    assert frame_problem(limit, max_frame) is None
    assert frame_problem(limit + 1, max_frame) == f"frame of {limit + 1} bytes exceeds the {limit}-byte limit"
    decoder = FrameDecoder(COORDINATOR_MESSAGES, max_frame)
    decoder.feed(HEADER.pack(limit + 1))
    with pytest.raises(FatalProtocolError) as refused:
        decoder.next_message()
    assert refused.value.code == ErrorCode.FRAME_TOO_LARGE


ranges = st.builds(
    Sample, id=st.just(1), seed=st.just(1), stream=st.integers(0, 100), points=st.integers(0, 50),
    kernel=st.just("numpy"), streams=st.integers(1, 300), group=st.none() | st.integers(1, 40),
)  # fmt: skip


@given(ranges)
def test_a_range_s_groups_cover_its_streams_and_bound_its_counts(sample: Sample) -> None:
    sizes = [sample.group_streams(index) for index in range(sample.groups)]
    assert sum(sizes) == sample.streams and all(0 < size <= sample.group_size for size in sizes)
    assert sizes[:-1] == [sample.group_size] * (len(sizes) - 1)
    most = [size * sample.points for size in sizes]
    reported = tuple(most) if sample.is_range else None
    assert sample.insides_problem(reported) is None
    if sample.points and sample.is_range:
        for index in (0, len(most) - 1):
            over = list(most)
            over[index] += 1
            assert sample.insides_problem(tuple(over)) == "more inside than a group has points"
