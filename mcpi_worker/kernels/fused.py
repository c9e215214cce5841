"""The ``numpy`` kernel's definition as one compiled loop (numba): the fast implementation.

NumPy makes several passes over memory per block; this steps the SFC64 state itself
and tests each point as it comes, so the only memory it touches is a 2 KiB buffer in
L1. The count is identical to ``numpy_impl.count`` for every (seed, stream, points):
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

from mcpi_worker import numba_cache
from mcpi_worker.kernels import drive
from mcpi_worker.kernels.base import StopCheck, kernel_log, never

if TYPE_CHECKING:
    from mcpi_worker.kernels.drive import Words

BLOCK_POINTS: Final[int] = drive.BLOCK_POINTS
WORDS_PER_PASS: Final[int] = drive.WORDS_PER_PASS

UNROLL_STEPS: Final[int] = 8
"""Generator steps per iteration of the generator's loop (``_count_outputs``)."""

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


def _count_outputs(state: np.ndarray, points: int, words: np.ndarray) -> int:
    """Count the next ``points`` points of the SFC64 ``state`` (a, b, c, counter) inside
    the quarter circle and leave ``state`` advanced past them.

    A point is one 64-bit output: x from its low 32 bits, y from its high 32 bits, each
    ``u >> 8`` (an integer below 2**24, exact in float32, converted through int32,
    which vectorises), tested unscaled as ``x*x + y*y < 2**48`` as numpy_impl does.
    Every operation is a float32 operation, rounded on its own: numba (LLVM without
    fast-math) never contracts ``x*x + y*y`` into a fused multiply-add, which would move
    a few points across the arc.

    Two passes per ``words.size`` outputs: the generator fills the buffer, then the test
    runs over it (that loop vectorises). The generator is one chain of dependent steps,
    and its speed is the length of that chain and the instructions per step. Left to
    itself, LLVM rewrites the steps algebraically across iterations (``b = 9c`` folded
    into later sums as ``81c``, ``729c``), which lengthens the chain and spills state to
    the stack. Each output passes through ``_opaque``, which LLVM cannot see through
    and which costs no instruction; the loop is unrolled by hand (``UNROLL_STEPS``
    steps an iteration), which LLVM no longer does once the barrier is there.
    """
    a = state[0]
    b = state[1]
    c = state[2]
    counter = state[3]
    inside = 0
    done = 0
    while done < points:
        n = min(words.size, points - done)
        i = 0
        while i + UNROLL_STEPS <= n:
            for k in range(UNROLL_STEPS):  # a constant trip count: LLVM unrolls it
                out = _opaque(a + b + counter)
                counter += _ONE
                a = b ^ (b >> _U11)
                b = c + (c << _U3)
                c = ((c << _U24) | (c >> _U40)) + out
                words[i + k] = out
            i += UNROLL_STEPS
        while i < n:
            out = _opaque(a + b + counter)
            counter += _ONE
            a = b ^ (b >> _U11)
            b = c + (c << _U3)
            c = ((c << _U24) | (c >> _U40)) + out
            words[i] = out
            i += 1
        part = np.int32(0)  # n is at most WORDS_PER_PASS: no overflow
        for i in range(n):
            x = np.float32(np.int32((words[i] >> _U8) & _MASK24))
            y = np.float32(np.int32(words[i] >> _U40))
            part += np.int32(x * x + y * y < _TWO_TO_48)
        inside += int(part)
        done += n
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
