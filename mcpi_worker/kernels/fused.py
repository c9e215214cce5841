"""The ``numpy`` kernel's definition as one compiled loop (numba): the fast implementation.

NumPy makes several passes over memory per block; this steps the SFC64 state itself
and tests the points a few dozen outputs after they come, so the only memory it touches
is a 1 KiB ring in L1. The count is identical to ``numpy_impl.count`` for every (seed, stream, points):
same generator state (NumPy seeds it), same draws, same float32 test (protocol.md
§11.2), which ``choice.py`` checks again each time it loads this module.

Importing this module is loading the implementation through numba: it imports numba and
takes the machine code from numba's on-disk cache, or compiles it (many times longer)
and writes the cache for the next process (docs/worker.md has the figures). Only
``choice.py`` imports it, when the load pays for itself and our object cache of the same
machine code (``native.py``, loaded without numba) cannot be used; and ``export.py``,
which writes that cache. The loops around the compiled call are ``drive.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba.core.extending import intrinsic

from mcpi_worker import numba_cache, numba_marker
from mcpi_worker.kernels import drive
from mcpi_worker.kernels.base import StopCheck, kernel_log, never

if TYPE_CHECKING:
    from mcpi_worker.kernels.drive import Words

BLOCK_POINTS: Final[int] = drive.BLOCK_POINTS
RING_WORDS: Final[int] = drive.RING_WORDS

GROUP: Final[int] = 16
"""Outputs the generator writes per iteration of ``_count_outputs``' main loop, and the
test takes per call of ``_inside16``: 16 words, two AVX-512 vectors (or four AVX2)."""

LAG_GROUPS: Final[int] = 4
"""How many groups after it was written a group is tested (64 outputs later). A vector
load of words that eight separate stores wrote cannot take them from the store buffer:
it waits until they reach the cache, which a group written a few iterations before has
done. ``RING_WORDS`` holds the group being written and the ``LAG_GROUPS`` behind it (a
distance of 4 KiB would be worse: a load and a store that far apart look alike to the
core's memory ordering checks, and the load waits)."""

if RING_WORDS % GROUP or RING_WORDS & (RING_WORDS - 1) or RING_WORDS < (LAG_GROUPS + 1) * GROUP:
    raise ImportError("the ring must be a power of two of whole groups, holding the lag and one more")

_RING_GROUPS_MASK: Final[int] = RING_WORDS // GROUP - 1

_U11: Final = np.uint64(11)
_U3: Final = np.uint64(3)
_U24: Final = np.uint64(24)
_U40: Final = np.uint64(40)
_U8: Final = np.uint64(8)
_ONE: Final = np.uint64(1)
_MASK24: Final = np.uint64(0xFFFFFF)
_TWO_TO_48: Final = np.float32(2.0**48)


def _opaque_typing(typingctx: Any, value: Any) -> Any:
    """``_opaque``'s numba typing and code: ``value`` unchanged, through an empty
    inline-assembly statement. No instruction is emitted, but LLVM can no longer see how
    the value was computed (``_count_outputs`` says why that matters)."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        word = llvm_ir.IntType(64)
        barrier = llvm_ir.InlineAsm(llvm_ir.FunctionType(word, [word]), "", "=r,0", side_effect=False)
        return builder.call(barrier, args)

    return value(value), codegen


_opaque = cast(Callable[[np.uint64], np.uint64], intrinsic(_opaque_typing))
"""A uint64 unchanged, LLVM's algebra stopped at it (callable from compiled code only)."""


def _inside16_typing(typingctx: Any, words: Any, start: Any) -> Any:
    """``_inside16``'s numba typing and code: how many of the ``GROUP`` points in
    ``words[start : start + GROUP]`` are inside, written as LLVM vector operations.

    The definition (protocol.md §11.2) on 32-bit halves: a word's x is ``(w >> 8) &
    0xFFFFFF``, which is its low 32 bits shifted right by 8, and its y is ``w >> 40``, its
    high 32 bits shifted right by 8. So the 16 words are loaded as 32 uint32, all shifted
    by 8 (each below 2**24), converted to float32 (exact) and squared; each square is added
    to its pair's other square (x*x + y*y and y*y + x*x are the same float32 sum: addition
    is commutative, rounding included), so every pair holds its point's sum, compared with
    2**48 (the even lanes' bits counted). Whichever half of a word comes first in memory,
    the pair is the same. The same operations, rounded the same way, as the scalar test,
    eight or sixteen points an instruction: what LLVM's loop vectoriser would do, here
    where the test is in the generator's loop, which that vectoriser leaves alone
    (numba's SLP vectoriser is off). Any target LLVM knows lowers the vectors to what it
    has (AVX-512: a few instructions; AVX2 or SSE: more of them)."""
    lanes = 2 * GROUP

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i32, f32 = llvm_ir.IntType(32), llvm_ir.FloatType()
        halves, floats = llvm_ir.VectorType(i32, lanes), llvm_ir.VectorType(f32, lanes)
        array = context.make_array(signature.args[0])(context, builder, args[0])
        address = builder.bitcast(builder.gep(array.data, [args[1]]), halves.as_pointer())
        loaded = builder.load(address, align=8)
        coordinates = builder.sitofp(builder.lshr(loaded, llvm_ir.Constant(halves, [8] * lanes)), floats)
        squares = builder.fmul(coordinates, coordinates)
        partner = [i ^ 1 for i in range(lanes)]
        sums = builder.fadd(squares, builder.shuffle_vector(squares, squares, llvm_ir.Constant(halves, partner)))
        below = builder.fcmp_ordered("<", sums, llvm_ir.Constant(floats, [2.0**48] * lanes))
        bits = builder.bitcast(below, llvm_ir.IntType(lanes))
        one_per_pair = builder.and_(bits, llvm_ir.Constant(llvm_ir.IntType(lanes), int("01" * GROUP, 2)))
        popcount = builder.module.declare_intrinsic("llvm.ctpop", [llvm_ir.IntType(lanes)])
        return builder.zext(builder.call(popcount, [one_per_pair]), llvm_ir.IntType(64))

    return numba.types.int64(words, start), codegen


_inside16 = cast(Callable[[np.ndarray, int], int], intrinsic(_inside16_typing))
"""The count of the ``GROUP`` points in ``words[start:]`` (callable from compiled code only)."""


def _count_outputs(state: np.ndarray, points: int, words: np.ndarray) -> int:
    """Count the next ``points`` points of the SFC64 ``state`` (a, b, c, counter) inside
    the quarter circle and leave ``state`` advanced past them. ``words``: at least
    ``RING_WORDS`` words of scratch.

    A point is one 64-bit output: x from its low 32 bits, y from its high 32 bits, each
    ``u >> 8`` (an integer below 2**24, exact in float32, converted through int32,
    which vectorises), tested unscaled as ``x*x + y*y < 2**48`` as numpy_impl does.
    Every operation is a float32 operation, rounded on its own: numba (LLVM without
    fast-math) never contracts ``x*x + y*y`` into a fused multiply-add, which would move
    a few points across the arc.

    The generator is one chain of dependent scalar steps; the test is independent per
    point and runs in vector registers. One loop does both: each iteration takes
    ``GROUP`` generator steps, writing the outputs into the ring ``words``, and tests
    (``_inside16``) the group written ``LAG_GROUPS`` iterations before, so the core runs
    the vector test beside the scalar chain instead of after it (a generator pass then a
    test pass leaves the vector units idle through the one and the chain through the
    other). The last groups are tested after the loop, and the points past the last
    whole group one by one.

    Left to itself, LLVM rewrites the generator's steps algebraically across iterations
    (``b = 9c`` folded into later sums as ``81c``, ``729c``), which lengthens the chain
    and spills state to the stack. Each output passes through ``_opaque``, which LLVM
    cannot see through and which costs no instruction; the steps of a group are
    unrolled (a constant trip count).
    """
    a = state[0]
    b = state[1]
    c = state[2]
    counter = state[3]
    inside = 0
    groups = points // GROUP
    for group in range(groups):
        at = (group & _RING_GROUPS_MASK) * GROUP
        for k in range(GROUP):  # a constant trip count: LLVM unrolls it
            out = _opaque(a + b + counter)
            counter += _ONE
            a = b ^ (b >> _U11)
            b = c + (c << _U3)
            c = ((c << _U24) | (c >> _U40)) + out
            words[at + k] = out
        if group >= LAG_GROUPS:
            inside += _inside16(words, ((group - LAG_GROUPS) & _RING_GROUPS_MASK) * GROUP)
    for group in range(max(groups - LAG_GROUPS, 0), groups):  # the groups not yet tested
        inside += _inside16(words, (group & _RING_GROUPS_MASK) * GROUP)
    for _ in range(points - groups * GROUP):  # fewer than GROUP: one by one
        out = _opaque(a + b + counter)
        counter += _ONE
        a = b ^ (b >> _U11)
        b = c + (c << _U3)
        c = ((c << _U24) | (c >> _U40)) + out
        x = np.float32(np.int32((out >> _U8) & _MASK24))
        y = np.float32(np.int32(out >> _U40))
        if x * x + y * y < _TWO_TO_48:
            inside += 1
    state[0] = a
    state[1] = b
    state[2] = c
    state[3] = counter
    return inside


_SIGNATURE: Final[str] = "int64(uint64[::1], int64, uint64[::1])"


def _jit(*, cache: bool) -> Any:
    """nogil: the loop touches no Python object, so threads (``mcpi-worker --jobs``) run
    it in parallel and the worker's reader thread keeps answering while it runs. With a
    signature given, numba compiles (or loads from its cache) right here. fastmath off
    (the default, said out loud): no contraction into FMA, no reassociation."""
    return numba.njit(_SIGNATURE, cache=cache, nogil=True, error_model="numpy", fastmath=False)(
        _count_outputs
    )


def _compile() -> tuple[Any, str | None]:
    """The compiled loop, and where its machine code is cached (None: in memory only)."""
    unsafe = numba_cache.refusal(_count_outputs)  # numba unpickles what it finds there
    if unsafe is not None:
        kernel_log().warning(
            "fused_kernel_cache_refused",
            reason=unsafe,
            consequence="compiling in memory in every worker process: numba loads its cache "
            "with pickle, so whoever can write there could run code in this worker; point "
            "NUMBA_CACHE_DIR at a directory only you can write (mode 700) to compile once",
        )
        return _jit(cache=False), None
    directory = numba_cache.cache_directory(_count_outputs)
    if directory is not None and numba_marker.match_numba_cache_to_sources(directory):
        kernel_log().info(
            "fused_kernel_cache_emptied",
            directory=str(directory),
            reason="the kernels' sources changed since numba's cache of them was written "
            "(numba checks a module's own source only, not the modules it calls)",
        )
    try:
        loop = _jit(cache=True)
    except RuntimeError as exc:
        if "no locator available" not in str(exc):  # numba's words for "nowhere to cache"
            raise
        kernel_log().warning(
            "fused_kernel_cache_unavailable",
            reason=str(exc),
            consequence="compiling in memory in every worker process; set NUMBA_CACHE_DIR "
            "to a directory only you can write (mode 700) to compile once",
        )
        return _jit(cache=False), None
    return loop, str(loop.stats.cache_path)


_LOOP, CACHE_PATH = _compile()

COMPILED: Final[bool] = sum(_LOOP.stats.cache_misses.values()) > 0
"""Whether this process compiled the loop (True) or loaded it from the cache (False)."""


def as_u64(buffer: Words) -> np.ndarray:
    """A uint64 NumPy array over ``buffer``'s memory (``drive``'s buffers are ``array.array``):
    what numba's entry points take, written through to the buffer."""
    return np.frombuffer(buffer, dtype=np.uint64)


def as_i64(buffer: Words) -> np.ndarray:
    """An int64 NumPy array over ``buffer``'s memory (``as_u64``)."""
    return np.frombuffer(buffer, dtype=np.int64)


class NumbaSingle:
    """The single-stream entry point as numba compiled it (``drive.SingleStream``)."""

    def count_outputs(self, state: Words, points: int, words: Words) -> int:
        return int(_LOOP(as_u64(state), points, as_u64(words)))


initial_state = drive.initial_state


def count_from(
    state: Words,
    points: int,
    should_stop: StopCheck = never,
    *,
    block_points: int = BLOCK_POINTS,
) -> int:
    """``drive.count_from`` through numba's entry point."""
    return drive.count_from(_SINGLE, state, points, should_stop, block_points=block_points)


def count(
    seed: int,
    stream: int,
    points: int,
    should_stop: StopCheck = never,
    *,
    block_points: int = BLOCK_POINTS,
) -> int:
    """The numpy kernel's count for (seed, stream, points) (``drive.count``)."""
    return drive.count(_SINGLE, seed, stream, points, should_stop, block_points=block_points)


_SINGLE: Final = NumbaSingle()
