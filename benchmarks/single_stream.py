"""The single-stream loop's shape, measured: fused.py's loop beside the variants it was
chosen from and the C two-pass loop, in the same run.

    python benchmarks/single_stream.py [--repeat 5] [--points 5e7] [--cc gcc]

Every row counts the same points (seed 20240601, stream 0 of the numpy kernel, as
``benchmarks/kernel.py``) on one core; the table says whether they agree. Rows:
- ``fused.py``: the loop the worker runs (``fused._LOOP``), through numba's entry point.
- ``one loop, group G, ring R, lag L``: the same loop built here with other sizes: each
  iteration writes G outputs into a ring of R words and tests the group written L
  iterations before (``_inside16`` per 16 words).
- ``... (a + counter) + b``: the output summed in another order (``b`` last).
- ``... test mid-group``: the test placed between the 8th and 9th step of a group.
- ``two passes, 1024 then test``: the loop before (a generator pass into 1024 words,
  then a test pass LLVM vectorises itself).
- ``two passes, 256 then _inside16``: two passes with this loop's vector test.
- ``C, two passes``: ``kernel_reference.c`` (``-O3 -march=native -ffp-contract=off``).
- ``C, its generator pass alone``, ``C, its test pass alone``: its two passes timed
  apart (``kernel_reference.c generate``, ``test``), left out of the agreement.

Process CPU time, median of ``--repeat`` interleaved rounds; the load average is printed.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
from kernel import LANES_SOURCE, SEED, Run, c_loop, clock_ghz, compile_reference, count, interleaved, load, timed

from mcpi_worker.kernels import drive, fused
from mcpi_worker.kernels.fused import _MASK24, _ONE, _TWO_TO_48, _U3, _U8, _U11, _U24, _U40, _inside16, _opaque

SIGNATURE = "int64(uint64[::1], int64, uint64[::1])"
APART = ("C, its generator pass alone", "C, its test pass alone")
"""The C two-pass loop's passes timed apart (they count nothing comparable)."""
Loop = Callable[[np.ndarray, int, np.ndarray], int]


def one_loop(group: int, ring: int, lag: int, *, b_last: bool = False, test_mid_group: bool = False) -> Loop:
    """fused._count_outputs with other sizes (``group``: 16 or 32 outputs an iteration)."""
    mask = ring // group - 1
    tests = group // 16
    mid = group // 2 if test_mid_group else -1

    def loop(state: np.ndarray, points: int, words: np.ndarray) -> int:
        a, b, c, counter = state[0], state[1], state[2], state[3]
        inside = 0
        groups = points // group
        for g in range(groups):
            at = (g & mask) * group
            for k in range(group):
                if k == mid and g >= lag:
                    for t in range(tests):
                        inside += _inside16(words, ((g - lag) & mask) * group + 16 * t)
                out = _opaque(_opaque(a + counter) + b) if b_last else _opaque(a + b + counter)
                counter += _ONE
                a = b ^ (b >> _U11)
                b = c + (c << _U3)
                c = ((c << _U24) | (c >> _U40)) + out
                words[at + k] = out
            if mid < 0 and g >= lag:
                for t in range(tests):
                    inside += _inside16(words, ((g - lag) & mask) * group + 16 * t)
        for g in range(max(groups - lag, 0), groups):
            for t in range(tests):
                inside += _inside16(words, (g & mask) * group + 16 * t)
        for _ in range(points - groups * group):
            out = a + b + counter
            counter += _ONE
            a = b ^ (b >> _U11)
            b = c + (c << _U3)
            c = ((c << _U24) | (c >> _U40)) + out
            x = np.float32(np.int32((out >> _U8) & _MASK24))
            y = np.float32(np.int32(out >> _U40))
            if x * x + y * y < _TWO_TO_48:
                inside += 1
        state[0], state[1], state[2], state[3] = a, b, c, counter
        return inside

    return numba.njit(SIGNATURE, nogil=True, error_model="numpy")(loop)  # type: ignore[no-any-return]


def two_passes(words_per_pass: int, *, vector_test: bool) -> Loop:
    """A generator pass of ``words_per_pass`` outputs (8 steps an iteration), then a test
    pass: LLVM's own vectorised loop, or ``_inside16`` per 16 words."""

    def loop(state: np.ndarray, points: int, words: np.ndarray) -> int:
        a, b, c, counter = state[0], state[1], state[2], state[3]
        inside = 0
        done = 0
        while done < points:
            n = min(words_per_pass, points - done)
            i = 0
            while i + 8 <= n:
                for k in range(8):
                    out = _opaque(a + b + counter)
                    counter += _ONE
                    a = b ^ (b >> _U11)
                    b = c + (c << _U3)
                    c = ((c << _U24) | (c >> _U40)) + out
                    words[i + k] = out
                i += 8
            while i < n:
                out = _opaque(a + b + counter)
                counter += _ONE
                a = b ^ (b >> _U11)
                b = c + (c << _U3)
                c = ((c << _U24) | (c >> _U40)) + out
                words[i] = out
                i += 1
            j = 0
            if vector_test:
                while j + 16 <= n:
                    inside += _inside16(words, j)
                    j += 16
            part = np.int32(0)
            for i in range(j, n):
                x = np.float32(np.int32((words[i] >> _U8) & _MASK24))
                y = np.float32(np.int32(words[i] >> _U40))
                part += np.int32(x * x + y * y < _TWO_TO_48)
            inside += int(part)
            done += n
        state[0], state[1], state[2], state[3] = a, b, c, counter
        return inside

    return numba.njit(SIGNATURE, nogil=True, error_model="numpy")(loop)  # type: ignore[no-any-return]


def run_loop(loop: Any) -> Run:
    """Timed calls of ``loop`` from the stream's first state, over 1024 words of scratch
    starting on a cache line (as ``drive`` allocates them)."""
    start = fused.initial_state(SEED, 0)
    words = fused.as_u64(drive.u64(1024))
    return timed(lambda n: int(loop(start.copy(), n, words)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--points", type=count, default=50_000_000)
    parser.add_argument("--cc", default="gcc")
    args = parser.parse_args()
    g, r, lag = fused.GROUP, fused.RING_WORDS, fused.LAG_GROUPS
    loops: dict[str, Any] = {
        f"fused.py (group {g}, ring {r}, lag {lag})": fused._LOOP,
        "one loop, group 16, ring 32, lag 1": one_loop(16, 32, 1),
        "one loop, group 16, ring 64, lag 2": one_loop(16, 64, 2),
        "one loop, group 16, ring 256, lag 8": one_loop(16, 256, 8),
        "one loop, group 16, ring 1024, lag 32 (4 KiB)": one_loop(16, 1024, 32),
        "one loop, group 32, ring 256, lag 4": one_loop(32, 256, 4),
        "one loop, group 16 ... (a + counter) + b": one_loop(16, 128, 4, b_last=True),
        "one loop, group 16 ... test mid-group": one_loop(16, 128, 4, test_mid_group=True),
        "two passes, 1024 then test (before)": two_passes(1024, vector_test=False),
        "two passes, 256 then _inside16": two_passes(256, vector_test=True),
    }
    rows: dict[str, tuple[Run, int]] = {name: (run_loop(loop), args.points) for name, loop in loops.items()}
    with tempfile.TemporaryDirectory() as build:
        binary = compile_reference(args.cc, Path(build))
        clock_binary = compile_reference(args.cc, Path(build), LANES_SOURCE)
        if binary is not None:
            rows["C, two passes"] = (c_loop(binary, "two-pass"), args.points)
            rows[APART[0]] = (c_loop(binary, "generate"), args.points)
            rows[APART[1]] = (c_loop(binary, "test"), args.points)
        ghz = clock_ghz(clock_binary)
        print(f"load average before: {load()}; {args.repeat} interleaved rounds of {args.points:.0e} points")
        median, counts = interleaved(rows, args.repeat)
    reference = median.get("C, two passes")
    print(f"\n{'':48} {'M points/s':>10} {'cycles/pt':>9} {'x C 2-pass':>10}")
    for name, seconds in median.items():
        rate = args.points / seconds
        cycles = f"{ghz * 1e9 / rate:9.2f}" if ghz else f"{'-':>9}"
        versus = f"{reference / seconds:10.2f}" if reference else f"{'-':>10}"
        print(f"{name:48} {rate / 1e6:10.1f} {cycles} {versus}")
    agreed = {c for name, values in counts.items() if name not in APART for c in values}
    print(f"counts agree: {len(agreed) == 1} ({sorted(agreed)})")
    print(f"load average after: {load()}" + (f"; clock {ghz:.2f} GHz" if ghz else ""))


if __name__ == "__main__":
    main()
