"""A ``Chunk`` is checked where it is made, by the protocol's own rules for the sample it
becomes, and refused with mcpi's own error: never a raw ``LocalProtocolError`` or
``OverflowError`` from deep inside the pool, nor an ``invalid_request`` round trip."""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio
from hypothesis import example, given
from hypothesis import strategies as st
from worker_process import PATIENT_START_S

from mcpi_coordinator.errors import InvalidChunk, RequestFailed
from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_worker.kernels import KERNELS
from mcpi_worker.protocol import MAX_POINTS, MAX_TEXT, UINT64_MAX, Sample
from mcpi_worker.protocol.admission import sample_problem


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"seed": -1}, "'seed' must be an integer from 0 to 2**64-1"),
        ({"seed": UINT64_MAX + 1}, "'seed' must be an integer from 0 to 2**64-1"),
        ({"seed": True}, "'seed' must be an integer"),
        ({"stream": -1}, "'stream' must be an integer from 0 to 2**64-1"),
        ({"points": MAX_POINTS + 1}, f"'points' must be an integer from 0 to {MAX_POINTS}"),
        ({"points": 1.5}, "'points' must be an integer"),
        ({"streams": 0}, "'streams' must be a positive integer"),
        ({"stream": UINT64_MAX, "streams": 2}, "go past 2**64-1"),
        ({"kernel": "k" * (MAX_TEXT + 1)}, f"'kernel' must be a string of at most {MAX_TEXT} characters"),
    ],
)
def test_a_chunk_out_of_the_protocol_s_range_is_refused_where_it_is_made(fields: dict[str, Any], why: str) -> None:
    with pytest.raises(InvalidChunk, match=re.escape(why)) as refused:
        Chunk(**{"seed": 1, "stream": 0, "points": 10, **fields})
    assert isinstance(refused.value, RequestFailed) and isinstance(refused.value, ValueError)
    assert not refused.value.retryable and "\n" not in str(refused.value)


async def test_a_real_pool_never_sees_a_bad_chunk_and_counts_those_at_the_limits() -> None:
    with trio.fail_after(300):  # a bound against a hang: a worker starts slowly on a busy machine
        async with WorkerPool(1, startup_timeout=PATIENT_START_S) as pool:
            with pytest.raises(InvalidChunk):  # before: a round trip, the worker's invalid_request
                await pool.sample(Chunk(-1, 0, 1000))
            # The widest seed and stream a request can carry, and ranges up to the last stream.
            assert (await pool.sample(Chunk(UINT64_MAX, UINT64_MAX, 1000))).inside == KERNELS["numpy"](
                UINT64_MAX, UINT64_MAX, 1000
            )
            last = await pool.sample(Chunk(7, UINT64_MAX - 2, 100, streams=3))
            assert last.insides == tuple(KERNELS["numpy"](7, UINT64_MAX - s, 100) for s in (2, 1, 0))
    Chunk(0, 0, MAX_POINTS, "k" * MAX_TEXT)  # the other limits themselves make chunks


fields_ = st.one_of(
    st.sampled_from([-1, 0, 1, MAX_POINTS, MAX_POINTS + 1, UINT64_MAX - 1, UINT64_MAX, UINT64_MAX + 1]),
    st.sampled_from([True, 1.0, None]),
    st.integers(-(2**65), 2**65),
)
kernels = st.sampled_from(["numpy", "", "k" * MAX_TEXT, "k" * (MAX_TEXT + 1), 5, None])


@given(fields_, fields_, fields_, kernels, fields_)
@example(1, 0, 1, "numpy", True)  # True == 1, and 1 is what an absent 'streams' means: still not an int
@example(1, 0, 1, "numpy", 1.0)
def test_a_chunk_is_refused_exactly_when_the_protocol_refuses_its_sample(
    seed: Any, stream: Any, points: Any, kernel: Any, streams: Any
) -> None:
    # Chunk's quick test (no Sample built) must say what the protocol's rule says.
    try:
        sample = Sample(0, seed, stream, points, kernel, streams, 1 if streams != 1 else None)
        expected = sample_problem(sample)
    except TypeError:  # arithmetic on a None or a str: no sample of it could be valid
        expected = "not numbers"
    try:
        Chunk(seed, stream, points, kernel, streams)
    except InvalidChunk:
        assert expected is not None
    else:
        assert expected is None
