"""Many streams of a range counted at once, one per SIMD lane: the numpy kernel's range loop.

Within one stream SFC64 is a single chain of dependent steps: each output needs the
state the previous step left, so one stream runs at the latency of that chain whatever
the machine's width. Across the streams of a range (protocol v2) nothing is dependent.
This loop keeps the state of ``LANES`` streams in four arrays (a, b, c, counter) and
steps them side by side: the loop over lanes is the innermost loop over arrays, which
is the shape LLVM's loop vectoriser turns into SIMD code (numba leaves its SLP
vectoriser off, so separate scalar variables, one per stream, are never vectorised).
Each pass over the lanes loads a lane's state once, takes ``UNROLL`` generator steps in
registers, tests each output as it comes, and stores the state back. Each iteration
takes two lanes half a group apart, so the vectorised loop carries two vectors of
independent chains that the core overlaps (LLVM, left to itself, interleaves one).

Every stream's count is exactly ``numpy_impl.count``'s (protocol.md §11.2): same
seeding (``fused_range``'s compiled §11.1), same draws, the same float32 test with two
roundings (no fast-math, so LLVM never contracts ``x*x + y*y`` into a fused
multiply-add). The tests hold it to NumPy stream by stream.

A group of fewer than ``LANES`` streams (the end of a range) is padded with the streams
that follow it, whose counts are dropped, to one vector of ``NARROW`` lanes or to a
multiple of ``LANE_MULTIPLE``: vectors part full still beat the scalar loop that a lane
count below one vector falls back to.
Ranges of fewer than ``MIN_STREAMS`` streams go through the single-stream loop.

The loops around the compiled calls (groups, stop checks) are ``drive.py``'s, shared with
the same machine code loaded from our object cache (``native.py``). Imported only where
``fused`` already is (it needs numba).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import numba
import numpy as np

from mcpi_worker.kernels import drive, fused, fused_range
from mcpi_worker.kernels.base import StopCheck, never
from mcpi_worker.kernels.drive import LANE_STATE_AT, SCRATCH_AT, STATE_AT
from mcpi_worker.kernels.fused import _MASK24, _ONE, _TWO_TO_48, _U3, _U8, _U11, _U24, _U40

if TYPE_CHECKING:
    from mcpi_worker.kernels.drive import Words

LANES: Final[int] = drive.LANES
LANE_MULTIPLE: Final[int] = drive.LANE_MULTIPLE
NARROW: Final[int] = drive.NARROW
MIN_STREAMS: Final[int] = drive.MIN_STREAMS
POINTS_PER_CALL: Final[int] = drive.LANES_POINTS_PER_CALL
SEED_COST_POINTS: Final[int] = drive.SEED_COST_POINTS

UNROLL: Final[int] = 4
"""Generator steps taken per lane per pass over the lanes (state in registers meanwhile)."""


def _sfc64(a: np.uint64, b: np.uint64, c: np.uint64, w: np.uint64) -> tuple[np.uint64, ...]:
    """One SFC64 step (protocol.md §11.2): the output, then the next (a, b, c, counter)."""
    out = a + b + w
    return out, b ^ (b >> _U11), c + (c << _U3), ((c << _U24) | (c >> _U40)) + out, w + _ONE


def _inside(out: np.uint64) -> np.int32:
    """1 if the output's point is inside the quarter circle, else 0 (as ``fused`` tests it)."""
    x = np.float32(np.int32((out >> _U8) & _MASK24))
    y = np.float32(np.int32(out >> _U40))
    return np.int32(x * x + y * y < _TWO_TO_48)


def _step_lanes(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, w: np.ndarray, counts: np.ndarray, steps: int, pairs: bool
) -> None:
    """Advance every lane's SFC64 state (a, b, c, counter) by ``steps`` outputs, adding to
    ``counts[j]`` the points of lane ``j`` inside the quarter circle. The number of lanes
    is ``NARROW`` or a multiple of ``LANE_MULTIPLE`` (``_width``).

    A point is one output: x its low 32 bits, y its high 32 bits, each ``u >> 8`` (below
    2**24: exact in float32, and converted through int32, which vectorises as one
    instruction), tested unscaled as ``x*x + y*y < 2**48`` as ``numpy_impl`` does.

    Each pass over the lanes takes lane ``j`` and lane ``j + half`` in one iteration:
    two independent vectors of chains in flight where LLVM would otherwise interleave
    one (numba gives no way to ask its vectoriser for more).
    """
    passes = steps // UNROLL
    # ``pairs`` is the caller's (``_width(...) > NARROW``) rather than tested here: told
    # that a loop runs at most 8 times, LLVM would not vectorise it at all.
    if not pairs:  # one vector: a pair would leave the second half empty
        for _ in range(passes):
            for j in range(a.size):
                sa, sb, sc, sw = a[j], b[j], c[j], w[j]
                inside = np.int64(0)
                for _step in range(UNROLL):  # a constant trip count: LLVM unrolls it
                    out, sa, sb, sc, sw = _sfc64(sa, sb, sc, sw)
                    inside += _inside(out)
                a[j], b[j], c[j], w[j] = sa, sb, sc, sw
                counts[j] += inside
    half = a.size // 2
    for _ in range(passes if pairs else 0):
        for j in range(half):
            k = j + half
            a0, b0, c0, w0 = a[j], b[j], c[j], w[j]
            a1, b1, c1, w1 = a[k], b[k], c[k], w[k]
            inside0 = np.int32(0)
            inside1 = np.int32(0)
            for _step in range(UNROLL):
                out0, a0, b0, c0, w0 = _sfc64(a0, b0, c0, w0)
                inside0 += _inside(out0)
                out1, a1, b1, c1, w1 = _sfc64(a1, b1, c1, w1)
                inside1 += _inside(out1)
            a[j], b[j], c[j], w[j] = a0, b0, c0, w0
            counts[j] += inside0
            a[k], b[k], c[k], w[k] = a1, b1, c1, w1
            counts[k] += inside1
    for _ in range(steps - passes * UNROLL):
        for j in range(a.size):
            out, a[j], b[j], c[j], w[j] = _sfc64(a[j], b[j], c[j], w[j])
            counts[j] += _inside(out)


def _seed_lanes(
    seed: np.uint64,
    first: np.uint64,
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    w: np.ndarray,
    work: np.ndarray,
) -> None:
    """Lane ``j`` := stream ``first + j`` (modulo 2**64: a padding lane past the last
    stream wraps around, and its count is dropped), as NumPy seeds it; ``work``:
    ``drive.WORK_WORDS`` words of scratch (its lane state left alone)."""
    state = work[STATE_AT : STATE_AT + 4]
    scratch = work[SCRATCH_AT : SCRATCH_AT + fused_range.SCRATCH_WORDS]
    for j in range(a.size):
        fused_range._seed_state(seed, first + np.uint64(j), state, scratch)
        a[j] = state[0]
        b[j] = state[1]
        c[j] = state[2]
        w[j] = state[3]


def _count_short(
    seed: np.uint64,
    first: np.uint64,
    streams: int,
    points: int,
    counts: np.ndarray,
    work: np.ndarray,
    group_counts: np.ndarray,
) -> None:
    """``counts[i]`` = the count of stream ``first + i``, for ``i`` below ``streams``, in
    groups of ``LANES`` (the last padded); all in one call, for streams short enough.
    ``work``: ``drive.WORK_WORDS`` words of scratch; ``group_counts``: ``LANES`` more."""
    a = work[LANE_STATE_AT : LANE_STATE_AT + LANES]
    b = work[LANE_STATE_AT + LANES : LANE_STATE_AT + 2 * LANES]
    c = work[LANE_STATE_AT + 2 * LANES : LANE_STATE_AT + 3 * LANES]
    w = work[LANE_STATE_AT + 3 * LANES : LANE_STATE_AT + 4 * LANES]
    done = 0
    while done < streams:
        real = min(LANES, streams - done)
        width = _width(real)
        group_counts[:width] = 0
        _seed_lanes(seed, first + np.uint64(done), a[:width], b[:width], c[:width], w[:width], work)
        _step_lanes(a[:width], b[:width], c[:width], w[:width], group_counts[:width], points, width > NARROW)
        counts[done : done + real] = group_counts[:real]
        done += real


def _jit(function: Any, signature: str) -> Any:
    """nogil: no Python object inside, so ``--jobs`` threads run in parallel and the
    reader thread keeps answering. fastmath off (the default, said out loud)."""
    return numba.njit(
        signature, cache=fused.CACHE_PATH is not None, nogil=True, error_model="numpy", fastmath=False
    )(function)


_ARRAYS: Final[str] = "uint64[::1], uint64[::1], uint64[::1], uint64[::1]"
_sfc64 = numba.njit(inline="always", cache=fused.CACHE_PATH is not None)(_sfc64)
_inside = numba.njit(inline="always", cache=fused.CACHE_PATH is not None)(_inside)
_width = _jit(drive.width, "int64(int64)")
_step_lanes = _jit(_step_lanes, f"void({_ARRAYS}, int64[::1], int64, boolean)")
_seed_lanes = _jit(_seed_lanes, f"void(uint64, uint64, {_ARRAYS}, uint64[::1])")
_COUNT_SHORT = _jit(_count_short, "void(uint64, uint64, int64, int64, int64[::1], uint64[::1], int64[::1])")


class NumbaCompiled(fused_range.NumbaRange):
    """Every entry point of ``drive.Compiled`` as numba compiled it."""

    def seed_lanes(self, seed: int, first: int, a: Words, b: Words, c: Words, w: Words, work: Words) -> None:
        u64 = fused.as_u64
        _seed_lanes(np.uint64(seed), np.uint64(first), u64(a), u64(b), u64(c), u64(w), u64(work))

    def step_lanes(self, a: Words, b: Words, c: Words, w: Words, counts: Words, steps: int, pairs: bool) -> None:
        u64 = fused.as_u64
        _step_lanes(u64(a), u64(b), u64(c), u64(w), fused.as_i64(counts), steps, pairs)

    def count_short(
        self, seed: int, first: int, streams: int, points: int, counts: Words, work: Words, group_counts: Words
    ) -> None:
        i64 = fused.as_i64
        _COUNT_SHORT(
            np.uint64(seed), np.uint64(first), streams, points, i64(counts), fused.as_u64(work), i64(group_counts)
        )


NUMBA: Final = NumbaCompiled()
"""numba's entry points, for ``drive``'s loops."""

long_groups = drive.long_groups


def count_streams(
    seed: int,
    first: int,
    streams: int,
    points: int,
    should_stop: StopCheck = never,
    *,
    points_per_call: int = POINTS_PER_CALL,
) -> list[int]:
    """``drive.count_streams`` through numba's entry points."""
    return drive.count_streams(NUMBA, seed, first, streams, points, should_stop, points_per_call=points_per_call)
