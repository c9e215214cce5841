"""The fused kernels' entry points with a plain C ABI, compiled into one object file for
``native.py``'s cache (the process that warms numba's cache writes it, ``warm.py``).

Each entry point is a numba ``cfunc`` of ``native.ENTRY_POINTS``' signature (pointers
and integers) that wraps its pointers as arrays (``carray``: no allocation, so no call
into numba's runtime) and calls the very compiled function numba's own path calls
(``fused._LOOP``, ``fused_range._COUNT``, ``lanes._seed_lanes``, ``lanes._step_lanes``,
``lanes._COUNT_SHORT``). The five compiled modules are linked into one and emitted as
object code by numba's own target machine (the host's CPU and features), as numba's
cache stores its machine code.

Importing this module imports numba and compiles the entry points (seconds of CPU):
only the warming process does, at the lowest priority.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import llvmlite.binding as llvm
import numba
from numba import types
from numba.core import config
from numba.np.numpy_support import carray

from mcpi_worker.kernels import fused, fused_range, lanes, native
from mcpi_worker.kernels.drive import LANES, RING_WORDS, WORK_WORDS

_LOOP: Final = fused._LOOP
_COUNT: Final = fused_range._COUNT
_SEED: Final = lanes._seed_lanes
_STEP: Final = lanes._step_lanes
_SHORT: Final = lanes._COUNT_SHORT


def count_outputs(state: Any, points: int, words: Any) -> int:
    return _LOOP(carray(state, 4), points, carray(words, RING_WORDS))  # type: ignore[no-any-return]


def count_range(seed: Any, first: Any, streams: int, points: int, counts: Any, work: Any) -> None:
    _COUNT(seed, first, streams, points, carray(counts, streams), carray(work, WORK_WORDS))


def seed_lanes(seed: Any, first: Any, width: int, a: Any, b: Any, c: Any, w: Any, work: Any) -> None:
    _SEED(
        seed,
        first,
        carray(a, width),
        carray(b, width),
        carray(c, width),
        carray(w, width),
        carray(work, WORK_WORDS),
    )


def step_lanes(width: int, a: Any, b: Any, c: Any, w: Any, counts: Any, steps: int, pairs: int) -> None:
    _STEP(
        carray(a, width),
        carray(b, width),
        carray(c, width),
        carray(w, width),
        carray(counts, width),
        steps,
        pairs != 0,
    )


def count_short(
    seed: Any, first: Any, streams: int, points: int, counts: Any, work: Any, group_counts: Any
) -> None:
    _SHORT(seed, first, streams, points, carray(counts, streams), carray(work, WORK_WORDS), carray(group_counts, LANES))


_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "count_outputs": count_outputs,
    "count_range": count_range,
    "seed_lanes": seed_lanes,
    "step_lanes": step_lanes,
    "count_short": count_short,
}

_TYPES: Final[dict[str, Any]] = {
    "void": types.void,
    "i64": types.int64,
    "u64": types.uint64,
    "u64*": types.CPointer(types.uint64),  # type: ignore[no-untyped-call]
    "i64*": types.CPointer(types.int64),  # type: ignore[no-untyped-call]
}


class ExportRefused(Exception):
    """The object would not be the host's code (numba told to compile for another CPU)."""


def compile_object() -> tuple[dict[str, str], bytes]:
    """Compile the entry points (never from numba's cache: a library loaded from there
    has given its object code to LLVM and kept none) and return their symbol names and
    the linked object code. Raises ``ExportRefused`` when numba is told to compile for
    a CPU other than the host (``NUMBA_CPU_NAME``, ``NUMBA_CPU_FEATURES``): that code
    is not what the host's key promises."""
    if getattr(config, "CPU_NAME", None) is not None or getattr(config, "CPU_FEATURES", None) is not None:
        raise ExportRefused("NUMBA_CPU_NAME or NUMBA_CPU_FEATURES asks numba for another CPU than this one")
    symbols: dict[str, str] = {}
    linked: Any = None
    machine: Any = None
    for name, function in _FUNCTIONS.items():
        result, arguments = native.ENTRY_POINTS[name]
        signature = _TYPES[result](*(_TYPES[a] for a in arguments))
        entry = numba.cfunc(signature, nogil=True, error_model="numpy", cache=False)(function)
        library = entry._library  # type: ignore[attr-defined]
        module = llvm.parse_bitcode(library._final_module.as_bitcode())
        if linked is None:
            linked, machine = module, library._codegen._tm
        else:
            linked.link_in(module)
        symbols[name] = entry.native_name
    return symbols, bytes(machine.emit_object(linked))


def export(directory: Path | None = None) -> Path:
    """Compile the object and write it for this host's key into ``directory`` (default:
    ``native.cache_directory()``), and remove this host's stale ones there
    (``native.stale_files``). Returns its path; raises ``ExportRefused``,
    ``native.NativeUnavailable`` (no directory, sources unreadable) or ``OSError``."""
    directory = native.cache_directory() if directory is None else directory
    if directory is None:
        raise native.NativeUnavailable("there is no directory to keep it in")
    key = native.host_key(llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten())
    symbols, code = compile_object()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = native.write(directory, key, symbols, code)
    for stale in native.stale_files(directory, key):  # never loaded again here
        with contextlib.suppress(OSError):
            stale.unlink()
    return written
