"""Many short streams in one compiled call: the fused kernel for a range (protocol v2).

Counting a stream costs a fixed set-up before its first point: NumPy's ``SeedSequence``
(protocol.md §11.1) and the SFC64 seeding with its 12 discarded outputs. Through NumPy
that costs about as much as counting 10,000 points with the fused loop, so chunks of
that size would do twice the work. Here the set-up is compiled too, beside the counting
loop of ``fused.py``, and a range of streams is counted in one call with the GIL
released: the set-up drops to a small fraction of that (docs/worker.md has the figures),
and the count of every stream is the same
as ``fused.count``'s (and so NumPy's), which the tests check stream by stream.

``lanes.py`` counts ranges of several streams side by side with this seeding; the
stream-by-stream loop here is for ranges of fewer than ``lanes.MIN_STREAMS``.

Imported only where ``fused`` already is (it needs numba).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import numba
import numpy as np

from mcpi_worker.kernels import drive, fused
from mcpi_worker.kernels.base import StopCheck, never
from mcpi_worker.kernels.drive import SCRATCH_AT, STATE_AT, WORDS_AT

if TYPE_CHECKING:
    from mcpi_worker.kernels.drive import Words

POINTS_PER_CALL: Final[int] = drive.RANGE_POINTS_PER_CALL

_M32: Final = np.uint64(0xFFFFFFFF)
_M64_SHIFT: Final = np.uint64(32)


def _hashmix(value: np.uint64, hash_const: np.uint64) -> tuple[np.uint64, np.uint64]:
    value = (value ^ hash_const) & _M32
    hash_const = (hash_const * np.uint64(0x931E8875)) & _M32
    value = (value * hash_const) & _M32
    return value ^ (value >> np.uint64(16)), hash_const


def _mix(x: np.uint64, y: np.uint64) -> np.uint64:
    r = (np.uint64(0xCA01F9DD) * x - np.uint64(0x4973F715) * y) & _M32
    return r ^ (r >> np.uint64(16))


SCRATCH_WORDS: Final[int] = drive.SCRATCH_WORDS


def _seed_state(seed: np.uint64, stream: np.uint64, state: np.ndarray, scratch: np.ndarray) -> None:
    """SFC64 (a, b, c, counter) for ``SeedSequence(seed, spawn_key=(stream,))``, after
    the 12 discarded outputs: protocol.md §11.1–11.2, step by step. ``scratch``
    (``SCRATCH_WORDS`` words) is the caller's: seeding many streams allocates nothing
    per stream."""
    entropy = scratch[0:6]
    pool = scratch[6:10]
    words = scratch[10:16]
    entropy[:] = 0
    entropy[0] = seed & _M32
    entropy[1] = seed >> _M64_SHIFT
    entropy[4] = stream & _M32
    n = 5
    if stream >> _M64_SHIFT:
        entropy[5] = stream >> _M64_SHIFT
        n = 6
    hash_const = np.uint64(0x43B0D7E5)
    for i in range(4):
        pool[i], hash_const = _hashmix(entropy[i], hash_const)
    for src in range(4):
        for dst in range(4):
            if dst != src:
                mixed, hash_const = _hashmix(pool[src], hash_const)
                pool[dst] = _mix(pool[dst], mixed)
    for k in range(4, n):
        for dst in range(4):
            mixed, hash_const = _hashmix(entropy[k], hash_const)
            pool[dst] = _mix(pool[dst], mixed)
    out_const = np.uint64(0x8B51F9DD)
    for i in range(6):
        value = (pool[i % 4] ^ out_const) & _M32
        out_const = (out_const * np.uint64(0x58F38DED)) & _M32
        value = (value * out_const) & _M32
        words[i] = value ^ (value >> np.uint64(16))
    a = words[0] | (words[1] << _M64_SHIFT)
    b = words[2] | (words[3] << _M64_SHIFT)
    c = words[4] | (words[5] << _M64_SHIFT)
    counter = np.uint64(1)
    for _ in range(12):
        out = a + b + counter
        counter += np.uint64(1)
        a = b ^ (b >> np.uint64(11))
        b = c + (c << np.uint64(3))
        c = ((c << np.uint64(24)) | (c >> np.uint64(40))) + out
    state[0] = a
    state[1] = b
    state[2] = c
    state[3] = counter


def _count_streams(
    seed: np.uint64, first: np.uint64, streams: int, points: int, counts: np.ndarray, work: np.ndarray
) -> None:
    """``counts[i]`` = the count of stream ``first + i``, for ``i`` below ``streams``;
    ``work``: ``drive.WORK_WORDS`` words of scratch."""
    state = work[STATE_AT : STATE_AT + 4]
    scratch = work[SCRATCH_AT : SCRATCH_AT + SCRATCH_WORDS]
    words = work[WORDS_AT : WORDS_AT + fused.RING_WORDS]
    for i in range(streams):
        _seed_state(seed, first + np.uint64(i), state, scratch)
        counts[i] = count_outputs(state, points, words)


def _jit(function: Any, signature: str, *, cache: bool) -> Any:
    return numba.njit(signature, cache=cache, nogil=True, error_model="numpy", fastmath=False)(function)


count_outputs = fused._LOOP  # the counting loop, compiled once, called from compiled code
_hashmix = numba.njit(cache=fused.CACHE_PATH is not None, nogil=True)(_hashmix)
_mix = numba.njit(cache=fused.CACHE_PATH is not None, nogil=True)(_mix)
_seed_state = numba.njit(cache=fused.CACHE_PATH is not None, nogil=True)(_seed_state)
_COUNT = _jit(
    _count_streams,
    "void(uint64, uint64, int64, int64, int64[::1], uint64[::1])",
    cache=fused.CACHE_PATH is not None,
)


class NumbaRange(fused.NumbaSingle):
    """The entry points as numba compiled them, up to the stream-by-stream range loop."""

    def count_range(self, seed: int, first: int, streams: int, points: int, counts: Words, work: Words) -> None:
        _COUNT(np.uint64(seed), np.uint64(first), streams, points, fused.as_i64(counts), fused.as_u64(work))


def count_streams(
    seed: int, first: int, streams: int, points: int, should_stop: StopCheck = never
) -> list[int]:
    """``drive.count_range`` through numba's entry points."""
    return drive.count_range(_RANGE, seed, first, streams, points, should_stop)


_RANGE: Final = NumbaRange()
