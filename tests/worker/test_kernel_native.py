"""Our object cache of the fused kernels' machine code, loaded without numba (issue 18).

The object ``export.py`` writes is loaded by ``native.load`` (llvmlite's JIT linker and
ctypes, no ``import numba``) and run under the same Python loops as numba's own entry
points (``drive.py``): every count must be NumPy's and numba's, stream by stream, and a
stop is still seen between calls. A file that is missing, truncated, corrupt, made for
another key, crafted (a valid checksum over something that is not our object), in a
directory others can write, or not this user's is refused with the reason before LLVM
sees it, and ``load_fused`` then loads through numba with one warning and the same
counts. Last, real ``mcpi-worker`` processes: one loads the object (its log says so),
others are handed broken files and count through numba.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llvmlite
import llvmlite.binding as llvm
import psutil
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from llvmlite.utils import get_library_name
from stop_checks import stop_after
from structlog.testing import capture_logs
from test_kernel_worker import (
    HINTED,
    TIMEOUT,
    WARMING_TIMEOUT,
    assert_golden_answers,
    base_environment,
    cancel_a_long_range_in_the_middle,
    events,
    hinted_answers,
    run_worker,
    warm_cache,
    worker_process,
)

from mcpi_worker import numba_marker
from mcpi_worker.kernels import Cancelled, drive, export, fused, lanes, llvm_link, native, numpy_impl
from mcpi_worker.kernels.checks import VERIFY_RANGES, VERIFY_SAMPLES, verify
from mcpi_worker.kernels.choice import FusedUnavailable, LoadedFrom, load_fused

U64 = st.integers(min_value=0, max_value=2**64 - 1)
NOBODY = 65534
LIBRARY = str(Path(llvmlite.__file__).parent / "binding" / get_library_name())


def numpy_counts(seed: int, first: int, streams: int, points: int) -> list[int]:
    return [numpy_impl.count(seed, (first + i) % 2**64, points) for i in range(streams)]


@pytest.fixture(scope="module")
def object_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the object for this process's key (compiled here, in memory)."""
    directory = tmp_path_factory.mktemp("object-cache")
    directory.chmod(0o700)
    export.export(directory)
    return directory


def worker_link() -> llvm_link.Link:
    """The link a worker takes (``llvm_link.link_backend`` in a process without
    ``llvmlite.binding``, as a worker is): this test process has imported it."""
    if llvm_link.direct_version(llvmlite.__version__):
        return llvm_link.DirectLink(LIBRARY)
    return llvm_link.BindingLink()


@pytest.fixture(scope="module")
def loaded(object_dir: Path) -> native.NativeCompiled:
    return native.load(object_dir, link=worker_link()).compiled


def object_file(directory: Path) -> Path:
    (path,) = directory.glob("mcpi-kernels-*.bin")
    return path


@pytest.fixture
def copy_dir(object_dir: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of ``object_dir`` for a test to break."""
    directory = tmp_path / "copy"
    shutil.copytree(object_dir, directory)
    directory.chmod(0o700)
    yield directory


def this_key() -> dict[str, str]:
    return native.host_key(llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten())


# ------------------------------------------------------------------ the counts


@settings(max_examples=120, deadline=None)
@given(
    seed=U64,
    first=st.one_of(U64, st.integers(2**64 - 200, 2**64 - 1), st.integers(2**32 - 70, 2**32 + 3)),
    streams=st.integers(1, 2 * drive.LANES + 11),
    points=st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 255, 256, 257, 1001]), st.integers(0, 3000)),
    points_per_call=st.sampled_from([1, 7, drive.LANES * 3 + 5, 10_000, drive.LANES_POINTS_PER_CALL]),
)
@example(seed=2**64 - 1, first=2**64 - 13, streams=13, points=7, points_per_call=1)  # the last stream; padded
@example(seed=11, first=0, streams=drive.NARROW + 1, points=13, points_per_call=10_000)
@example(seed=5, first=3, streams=drive.MIN_STREAMS - 1, points=9, points_per_call=10_000)  # stream by stream
def test_each_stream_counts_as_numba_and_numpy_count_it(
    loaded: native.NativeCompiled, seed: int, first: int, streams: int, points: int, points_per_call: int
) -> None:
    streams = min(streams, 2**64 - first)
    ours = drive.count_streams(loaded, seed, first, streams, points, points_per_call=points_per_call)
    assert ours == lanes.count_streams(seed, first, streams, points, points_per_call=points_per_call)
    assert ours == numpy_counts(seed, first, streams, points)


@settings(max_examples=60, deadline=None)
@given(
    seed=U64,
    stream=U64,
    points=st.one_of(st.sampled_from([0, 1, 7, 8, 9, 1023, 1024, 1025]), st.integers(0, 50_000)),
    block_points=st.sampled_from([1, 8, 1000, drive.BLOCK_POINTS]),
)
def test_a_single_stream_counts_as_numba_and_numpy_count_it(
    loaded: native.NativeCompiled, seed: int, stream: int, points: int, block_points: int
) -> None:
    ours = drive.count(loaded, seed, stream, points, block_points=block_points)
    assert ours == fused.count(seed, stream, points, block_points=block_points)
    assert ours == numpy_impl.count(seed, stream, points)


@settings(max_examples=200, deadline=None)
@given(seed=U64, stream=st.one_of(U64, st.integers(2**64 - 3, 2**64 - 1), st.integers(2**32 - 2, 2**32 + 1)))
def test_the_compiled_seeding_of_one_stream_is_numpys(loaded: native.NativeCompiled, seed: int, stream: int) -> None:
    """``drive.first_state``: the state a stream is counted from, seeded by the compiled
    code (no NumPy), is the state NumPy seeds it with, for both sets of entry points."""
    numpy_state = tuple(int(word) for word in drive.initial_state(seed, stream))
    for compiled in (loaded, lanes.NUMBA):
        assert tuple(int(word) for word in drive.first_state(compiled, seed, stream)) == numpy_state


HELPERS_SCRIPT = """
import importlib, json, sys
from mcpi_worker.kernels import native
package = native.Path(next(iter(importlib.util.find_spec("numba").submodule_search_locations)))
found = {}
for module_name, prefix in native._NUMBA_HELPERS:
    location = native._extension_file(package, module_name)
    names = [name for name, kind, section, _ in native._symbols(location.read_bytes(), native._ET_DYN)
             if name.startswith(prefix) and kind == native._STT_FUNC and section != 0]
    found.update(native._helpers_uninitialised(location, module_name, names))
numpy_before = "numpy" in sys.modules
given = {}
for module_name, prefix in native._NUMBA_HELPERS:
    module = importlib.import_module(module_name)
    given.update({prefix + name: address for name, address in module.c_helpers.items()})
print(json.dumps([numpy_before, found, given]))
"""


def test_numba_s_helpers_found_without_its_modules_are_those_its_modules_give() -> None:
    """``native._helpers_uninitialised`` finds numba's C helpers by the symbol tables of its
    extension files, loaded without their initialisation (which imports NumPy): every
    helper it finds by a name numba gives is at the very address numba gives for it, and
    it finds most of them (among them those our object needs); NumPy is not imported."""
    done = subprocess.run([sys.executable, "-c", HELPERS_SCRIPT], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    numpy_before, found, given = json.loads(done.stdout)
    assert numpy_before is False
    both = set(found) & set(given)
    assert len(both) >= 0.8 * len(given), sorted(set(given) - set(found))
    assert {name: found[name] for name in both} == {name: given[name] for name in both}
    needed = {"numba_gil_ensure", "numba_gil_release", "numba_do_raise", "numba_unpickle", "NRT_Allocate", "NRT_Free"}
    assert needed <= both


# ------------------------------------------------------------------ LLVM, two ways


def test_the_direct_link_calls_each_entry_point_as_llvmlite_binding_declares_it() -> None:
    """``DirectLink`` calls ``libllvmlite`` with the C types it writes down: they must be
    the installed llvmlite's own (its ``ffi.lib`` declarations; a pointer to an LLVM
    object is a pointer), or, for a version it was not checked against, it is not used."""
    if not llvm_link.direct_version(llvmlite.__version__):
        assert isinstance(llvm_link.link_backend(), llvm_link.BindingLink)
        return

    def plain(kind: Any) -> Any:
        if kind is not None and kind is not ctypes.c_char_p and issubclass(kind, ctypes._Pointer):
            return ctypes.c_void_p if kind._type_.__name__.startswith("LLVM") else kind
        return kind

    for name, (result, arguments) in llvm_link._SIGNATURES.items():
        declared = getattr(llvm.ffi.lib, name)
        # ctypes' default result type, int, where llvmlite declares none: a void function
        declared_arguments = None if declared.argtypes is None else [plain(a) for a in declared.argtypes]
        assert (plain(declared.restype), declared_arguments) == (
            result or ctypes.c_int,
            None if arguments is None else list(arguments),
        ), name


def test_both_links_see_the_same_host_cpu() -> None:
    assert worker_link().host_cpu() == llvm_link.BindingLink().host_cpu()
    assert llvm_link.BindingLink().host_cpu() == (llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten())


@pytest.mark.parametrize(
    ("features", "flat"),
    [("", ""), ("+b,-a,,+c", "-a,+b,+c"), ("+a,-a", "-a"), ("-x", "-x")],
)
def test_features_are_flattened_as_llvmlite_flattens_them(features: str, flat: str) -> None:
    mapping = llvm.targets.FeatureMap({f[1:]: f[0] == "+" for f in features.split(",") if f})
    assert llvm_link.flatten_features(features) == flat == mapping.flatten()


def test_the_object_loaded_through_llvmlite_binding_counts_as_the_direct_link_s(
    object_dir: Path, loaded: native.NativeCompiled
) -> None:
    through_binding = native.load(object_dir, link=llvm_link.BindingLink()).compiled
    verify(through_binding)
    for compiled in (through_binding, loaded):
        counts = drive.count_streams(compiled, 17, 2**64 - 5, 40, 333)
        assert list(counts) == numpy_counts(17, 2**64 - 5, 40, 333)


def test_a_process_that_loads_the_object_does_not_import_llvmlite_binding(object_dir: Path) -> None:
    """Its Python layer is most of a load's CPU (``llvm_link``): a worker's process, which has
    not imported it, links through ``libllvmlite``'s entry points directly, and counts (with
    an llvmlite ``DirectLink`` was not checked against, through ``llvmlite.binding``)."""
    script = (
        "import sys; from mcpi_worker.kernels import native, drive;"
        f"compiled = native.load(native.Path({str(object_dir)!r})).compiled;"
        "print(list(drive.count_streams(compiled, 17, 5, 20, 333)), 'llvmlite.binding' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == str(not llvm_link.direct_version(llvmlite.__version__))
    assert done.stdout.rsplit(" ", 1)[0] == str(numpy_counts(17, 5, 20, 333))


def test_the_load_checks_table_is_what_numpy_counts() -> None:
    """``checks.verify`` compares with counts kept in a table (no NumPy sampling at load
    time): they must be NumPy's, from the state NumPy seeds each stream with."""
    for sample in VERIFY_SAMPLES:
        assert tuple(int(word) for word in drive.initial_state(sample.seed, sample.stream)) == sample.state
        assert numpy_impl.count(sample.seed, sample.stream, sample.points) == sample.inside
    for case in VERIFY_RANGES:
        assert tuple(numpy_counts(case.seed, case.first, case.streams, case.points)) == case.insides


def test_the_load_checks_pass_for_both_sets_of_entry_points(loaded: native.NativeCompiled) -> None:
    verify(loaded)
    verify(lanes.NUMBA)


class OffByOne(lanes.NumbaCompiled):
    """numba's entry points, but the lanes count one point too many per call."""

    def step_lanes(self, *args: Any) -> None:
        super().step_lanes(*args)
        args[4][0] += 1


def test_entry_points_that_count_wrong_are_refused() -> None:
    with pytest.raises(FusedUnavailable, match="the compiled range counted"):
        verify(OffByOne())


@pytest.mark.parametrize("streams, points", [(200, 100), (70, 100_000), (2, 2_000_000)])
def test_a_stop_between_calls_cancels(loaded: native.NativeCompiled, streams: int, points: int) -> None:
    should_stop, calls = stop_after(3)
    with pytest.raises(Cancelled):
        drive.count_streams(loaded, 1, 0, streams, points, should_stop, points_per_call=1000)
    assert calls[0] == 3


# ------------------------------------------------------------------ what is refused


def refusal(directory: Path) -> str:
    with pytest.raises(native.NativeUnavailable) as raised:
        native.load(directory)
    return str(raised.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    assert "there is no object cache" in refusal(tmp_path)


def test_a_truncated_file_is_refused(copy_dir: Path) -> None:
    path = object_file(copy_dir)
    data = path.read_bytes()
    for keep in (len(data) - 1, len(data) // 2, 40, 10):
        path.write_bytes(data[:keep])
        assert "not whole" in refusal(copy_dir) or "not an object cache file" in refusal(copy_dir)


def test_a_corrupt_object_is_refused(copy_dir: Path) -> None:
    path = object_file(copy_dir)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x40
    path.write_bytes(bytes(data))
    assert "checksum differs" in refusal(copy_dir)


def test_a_file_made_for_another_cpu_is_refused(copy_dir: Path) -> None:
    path = object_file(copy_dir)
    symbols, code = native.decode(path.read_bytes(), this_key())
    other = {**this_key(), "cpu": "some-other-cpu"}
    path.write_bytes(native.encode(other, symbols, code))
    assert refusal(copy_dir) == "it was made for another cpu"


def crafted(directory: Path, code: bytes) -> None:
    """A file whose header, key and checksum are right, over ``code``."""
    path = object_file(directory)
    symbols, _ = native.decode(path.read_bytes(), this_key())
    path.write_bytes(native.encode(this_key(), symbols, code))


def test_a_crafted_file_that_is_no_elf_object_is_refused(copy_dir: Path) -> None:
    crafted(copy_dir, b"\x7fELF" + b"\0" * 100)
    assert "not a relocatable ELF64 object" in refusal(copy_dir)


def test_a_crafted_object_needing_an_unknown_symbol_is_refused_before_llvm_links_it(copy_dir: Path) -> None:
    """LLVM ends the process on an unresolved symbol: it must never get such an object."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    module = llvm.parse_assembly(
        "declare i64 @mcpi_no_such_symbol(i64)\n"
        "define i64 @f(i64 %x) {\n  %y = call i64 @mcpi_no_such_symbol(i64 %x)\n  ret i64 %y\n}\n"
    )
    machine = llvm.Target.from_default_triple().create_target_machine(jit=True)
    crafted(copy_dir, machine.emit_object(module))
    assert refusal(copy_dir) == "the object needs mcpi_no_such_symbol, which this process does not have"


def test_a_crafted_object_with_tables_outside_it_is_refused(copy_dir: Path) -> None:
    code = bytearray(native.decode(object_file(copy_dir).read_bytes(), this_key())[1])
    struct.pack_into("<Q", code, 0x28, len(code) + 4096)  # e_shoff: the section headers
    crafted(copy_dir, bytes(code))
    assert "tables are not whole" in refusal(copy_dir)


def test_a_file_others_can_write_is_refused(copy_dir: Path) -> None:
    object_file(copy_dir).chmod(0o664)
    assert "is writable by others (mode 0664)" in refusal(copy_dir)


def test_a_directory_others_can_write_is_refused(copy_dir: Path) -> None:
    copy_dir.chmod(0o777)
    assert "its directory is unsafe" in refusal(copy_dir) and "writable by others" in refusal(copy_dir)


def test_a_symbolic_link_is_refused(copy_dir: Path, tmp_path: Path) -> None:
    path = object_file(copy_dir)
    target = tmp_path / "elsewhere.bin"
    path.rename(target)
    path.symlink_to(target)
    assert "cannot be opened" in refusal(copy_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_file_of_another_user_is_refused(copy_dir: Path) -> None:
    path = object_file(copy_dir)
    os.chown(path, NOBODY, NOBODY)
    reason = refusal(copy_dir)
    assert f"owned by uid {NOBODY}, not by this user" in reason


def test_load_fused_falls_back_to_numba_with_one_warning_and_the_same_counts(copy_dir: Path) -> None:
    path = object_file(copy_dir)
    path.write_bytes(path.read_bytes()[:-1])
    with capture_logs() as logs:
        loaded = load_fused(copy_dir)
    assert loaded.loaded_from is LoadedFrom.NUMBA and "not whole" in (loaded.native_refused or "")
    (said,) = [entry for entry in logs if entry["log_level"] == "warning"]
    assert said["event"] == "fused_kernel_object_cache_refused" and "not whole" in said["reason"]
    assert loaded.count_streams(3, 10, 70, 999, lambda: False) == numpy_counts(3, 10, 70, 999)


def test_load_fused_takes_the_object_when_it_is_there(object_dir: Path) -> None:
    with capture_logs() as logs:
        loaded = load_fused(object_dir)
    assert loaded.loaded_from is LoadedFrom.OBJECT_CACHE and loaded.cache_path == str(object_file(object_dir))
    assert not logs
    assert loaded.count(3, 10, 100_003) == numpy_impl.count(3, 10, 100_003)


def test_the_file_is_named_by_what_the_quick_look_knows_the_format_among_it() -> None:
    """``has_object`` looks for the name ``numba_marker`` works out without llvmlite: it
    must be the name the key gives, and another format's (or CPU's) file another name."""
    key = this_key()
    assert native.file_name(key) == numba_marker.object_name_here()
    for other in ({"format": "1"}, {"host": "x86_64\nmodel name: some other cpu"}, {"sources": "0" * 64}):
        assert native.file_name({**key, **other}) != native.file_name(key)


def test_stale_files_are_this_hosts_for_other_keys_and_broken_ones(copy_dir: Path) -> None:
    """What the warming process removes once it has written the object: this host's files
    for older sources, and broken ones; never another CPU's (a shared directory)."""
    ours = object_file(copy_dir)
    symbols, code = native.decode(ours.read_bytes(), this_key())
    older = {**this_key(), "sources": "0" * 64}
    other_cpu = {**this_key(), "cpu": "some-other-cpu", "host": "x86_64\nmodel name: some other cpu"}
    for key in (older, other_cpu):
        (copy_dir / native.file_name(key)).write_bytes(native.encode(key, symbols, code))
    broken = copy_dir / "mcpi-kernels-0000000000000000.bin"
    broken.write_bytes(b"mcpi")
    assert sorted(native.stale_files(copy_dir, this_key())) == sorted([copy_dir / native.file_name(older), broken])


# ------------------------------------------------------------------ real workers


@pytest.fixture(scope="module")
def warm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """numba's cache and our object cache, both written by the warming process."""
    directory = tmp_path_factory.mktemp("warm") / "numba-cache"
    warm_cache(base_environment(NUMBA_CACHE_DIR=str(directory)))
    object_file(directory)  # the warming process wrote it
    return directory


def worker_logs(directory: Path, **environ: str) -> list[dict[str, object]]:
    messages, logs = run_worker(
        base_environment(MCPI_NUMPY_IMPL="fused", NUMBA_CACHE_DIR=str(directory), **environ)
    )
    assert_golden_answers(messages)  # the golden table and a range in lanes, as NumPy counts them
    return logs


@pytest.mark.slow
def test_a_real_worker_loads_the_object_without_numba(warm_dir: Path) -> None:
    logs = worker_logs(warm_dir)
    (loaded,) = events(logs, "numpy_kernel_implementation")
    assert loaded["loaded_from"] == "object cache" and loaded["cache_path"] == str(object_file(warm_dir))
    assert not [entry for entry in logs if entry["level"] == "warning"]


@pytest.mark.slow
def test_a_real_worker_counting_from_the_object_is_cancelled_in_the_middle(warm_dir: Path) -> None:
    """Minutes of a range in lanes through the object's entry points: once the worker has
    spent CPU time on it (psutil, not a flag), a cancel ends it with ``cancelled``; then
    it answers a range exactly and exits 0 at end of input, having said where its
    machine code came from."""
    environ = base_environment(MCPI_NUMPY_IMPL="fused", NUMBA_CACHE_DIR=str(warm_dir))
    with worker_process(environ) as (process, client):  # under fused: loaded before the welcome
        cancel_a_long_range_in_the_middle(process, client)
        assert process.stdin is not None and process.stderr is not None
        process.stdin.close()
        assert process.wait(timeout=TIMEOUT) == 0
        lines = [json.loads(line) for line in process.stderr.read().decode().splitlines() if line.startswith("{")]
    (loaded,) = events(lines, "numpy_kernel_implementation")
    assert loaded["loaded_from"] == "object cache"


@pytest.mark.slow
def test_without_numba_a_worker_with_an_object_cache_counts_with_numpy_and_says_so_once(
    warm_dir: Path, tmp_path: Path
) -> None:
    """The object needs numba's C helpers: where ``import numba`` fails, the worker
    neither loads the object nor crashes; it counts with NumPy and says why once."""
    shadow = tmp_path / "shadow" / "numba"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'numba' (hidden)\")\n")
    environ = base_environment(MCPI_NUMPY_IMPL="fused", NUMBA_CACHE_DIR=str(warm_dir), PYTHONPATH=str(shadow.parent))
    messages, logs = run_worker(environ)
    assert_golden_answers(messages)
    (said,) = [entry for entry in logs if entry["level"] == "warning"]
    assert said["event"] == "fused_kernel_unavailable" and "numba is not installed" in str(said["reason"])
    assert not events(logs, "numpy_kernel_implementation")


@pytest.mark.slow
def test_with_the_object_cache_a_hint_of_a_fifth_of_the_old_threshold_loads_at_once(warm_dir: Path) -> None:
    """A hint of 3e7 points (numba's load wants 1e8): from the object cache the lanes count
    from the first sample; through numba (``MCPI_OBJECT_CACHE=off``) NumPy does, as before.
    The counts are the same."""
    environ = base_environment(NUMBA_CACHE_DIR=str(warm_dir))
    cheap, logs = hinted_answers(environ, 30_000_000)
    dear, dear_logs = hinted_answers({**environ, "MCPI_OBJECT_CACHE": "off"}, 30_000_000)
    assert [r.implementation for r in cheap] == ["numba-fused"] * len(HINTED)
    assert [r.implementation for r in dear] == ["numpy"] * len(HINTED)
    assert [(r.inside, r.insides) for r in cheap] == [(r.inside, r.insides) for r in dear]
    (loaded,) = events(logs, "numpy_kernel_implementation")
    assert loaded["loaded_from"] == "object cache" and loaded["numpy_points"] == 0
    assert not events(dear_logs, "numpy_kernel_implementation")


def warmers_of(directory: Path) -> list[psutil.Process]:
    """The warming processes (``python -m mcpi_worker.kernels.warm``) working for ``directory``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.cmdline()[-3:] == ["-P", "-m", "mcpi_worker.kernels.warm"] and process.environ().get(
                "NUMBA_CACHE_DIR"
            ) == str(directory):
                found.append(process)
        except psutil.Error:  # gone meanwhile, or another user's
            continue
    return found


@pytest.mark.slow
def test_a_real_worker_without_the_object_file_has_it_written_without_a_warning(
    warm_dir: Path, tmp_path: Path
) -> None:
    """numba's cache warm and our object file simply not there (an install from before it,
    a cleaned directory): the worker loads through numba without a warning, says so at
    info, and its warming process writes the object, waited for by its exit; the next
    worker loads from it. The warming process runs at nice 0 here (``MCPI_WARM_NICENESS``,
    which the worker passes on): at its usual nice 19, on a loaded machine, it got ~1% of
    a core and took far longer than any bound."""
    directory = tmp_path / "numba-cache"
    shutil.copytree(warm_dir, directory)
    object_file(directory).unlink()
    logs = worker_logs(directory, MCPI_WARM_NICENESS="0")
    assert not [entry for entry in logs if entry["level"] == "warning"], logs
    (said,) = events(logs, "fused_kernel_object_cache_missing")
    assert "there is no object cache" in str(said["reason"])
    (loaded,) = events(logs, "numpy_kernel_implementation")
    assert loaded["loaded_from"] == "numba" and loaded["compiled"] is False
    warmers = warmers_of(directory)
    assert len(warmers) <= 1  # one per worker, and none left over from elsewhere
    _, alive = psutil.wait_procs(warmers, timeout=WARMING_TIMEOUT)
    assert not alive
    object_file(directory)  # written (also when it was done before we looked)
    logs = worker_logs(directory)
    assert not [entry for entry in logs if entry["level"] == "warning"], logs
    assert not events(logs, "fused_kernel_object_cache_missing")
    (loaded,) = events(logs, "numpy_kernel_implementation")
    assert loaded["loaded_from"] == "object cache" and loaded["cache_path"] == str(object_file(directory))


def wants_warming(environ: dict[str, str]) -> bool:
    """``NumbaCache.wants_warming`` for the cache ``environ`` names, its marker written
    first (numba's cache is warm: a copy of a warm one, whose marker is named by the path)."""
    script = "from mcpi_worker.numba_marker import NumbaCache as C; C().mark_warm(); print(C().wants_warming())"
    said = subprocess.run(
        [sys.executable, "-c", script],
        env=environ, capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )  # fmt: skip
    return {"True\n": True, "False\n": False}[said.stdout]


@pytest.mark.slow
def test_mcpi_estimate_has_a_missing_object_file_written_too(warm_dir: Path, tmp_path: Path) -> None:
    """``mcpi estimate`` warms for its workers (they leave it to it): what it asks
    (``NumbaCache.wants_warming``) says yes where numba's cache is warm but the object
    file is missing, unless ``MCPI_OBJECT_CACHE=off``."""
    directory = tmp_path / "numba-cache"
    shutil.copytree(warm_dir, directory)
    environ = base_environment(NUMBA_CACHE_DIR=str(directory))
    assert wants_warming(environ) is False
    object_file(directory).unlink()
    assert wants_warming(environ) is True
    assert wants_warming({**environ, "MCPI_OBJECT_CACHE": "off"}) is False


def cache_view(environ: dict[str, str]) -> tuple[bool, bool]:
    """``NumbaCache.has_object`` and ``wants_warming`` in a process of their own, for the
    cache ``environ`` names (numba's cache warm: its marker written first)."""
    script = (
        "from mcpi_worker.numba_marker import NumbaCache as C; C().mark_warm(); "
        "print(C().has_object(), C().wants_warming())"
    )
    said = subprocess.run(
        [sys.executable, "-c", script],
        env=environ, capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )  # fmt: skip
    has_object, wants = said.stdout.split()
    return has_object == "True", wants == "True"


def only_another_cpus_file(directory: Path) -> Path:
    """Replace this host's object in ``directory`` by the file another CPU sharing the
    directory would write (the same object under another CPU's key, by its name)."""
    ours = object_file(directory)
    symbols, code = native.decode(ours.read_bytes(), this_key())
    other = {**this_key(), "cpu": "some-other-cpu", "host": "x86_64\nmodel name: some other cpu"}
    theirs = directory / native.file_name(other)
    theirs.write_bytes(native.encode(other, symbols, code))
    theirs.chmod(0o600)
    ours.unlink()
    return theirs


@pytest.mark.slow
def test_another_cpus_file_in_a_shared_directory_is_not_this_hosts_object(warm_dir: Path, tmp_path: Path) -> None:
    """The quick look went by any file of the cache's pattern: another CPU's file made
    ``auto`` take its load as cheap (then pay numba's, a quarter of a second, at a fifth
    of the points) and kept ``mcpi estimate`` from having this host's file written. It is
    not looked at now (a file of its name is not this host's), and never opened."""
    directory = tmp_path / "numba-cache"
    shutil.copytree(warm_dir, directory)
    environ = base_environment(NUMBA_CACHE_DIR=str(directory))
    assert cache_view(environ) == (True, False)
    only_another_cpus_file(directory)
    assert cache_view(environ) == (False, True)  # not there: mcpi estimate has it written
    with pytest.raises(native.ObjectMissing):  # not "made for another cpu": never opened
        native.load(directory)
    # A hint of 3e7 points loads at once from this host's object (the test above), not
    # from another's: NumPy counts, as without an object cache, and nothing is refused.
    answers, logs = hinted_answers(environ, 30_000_000)
    assert [r.implementation for r in answers] == ["numpy"] * len(HINTED)
    assert not events(logs, "numpy_kernel_implementation")
    assert not [entry for entry in logs if entry["level"] == "warning"], logs


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def for_another_cpu(path: Path) -> None:
    data = path.read_bytes()
    at = len(native.MAGIC) + 4
    (length,) = struct.unpack_from("<I", data, len(native.MAGIC))
    header = json.loads(data[at : at + length])
    header["key"]["cpu"] = "some-other-cpu"
    text = json.dumps(header, sort_keys=True).encode()
    path.write_bytes(native.MAGIC + struct.pack("<I", len(text)) + text + data[at + length :])


def another_owner(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY)


BREAKS = {
    "truncated": (truncate, "not whole"),
    "corrupt": (corrupt, "checksum differs"),
    "another cpu": (for_another_cpu, "made for another cpu"),
    "another owner": (another_owner, f"owned by uid {NOBODY}"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BREAKS))
def test_a_real_worker_handed_a_broken_file_counts_through_numba(warm_dir: Path, tmp_path: Path, name: str) -> None:
    if name == "another owner" and os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    directory = tmp_path / "numba-cache"
    shutil.copytree(warm_dir, directory)
    breaks, reason = BREAKS[name]
    breaks(object_file(directory))
    logs = worker_logs(directory)
    (said,) = [entry for entry in logs if entry["level"] == "warning"]
    assert said["event"] == "fused_kernel_object_cache_refused" and reason in str(said["reason"])
    (loaded,) = events(logs, "numpy_kernel_implementation")
    assert loaded["loaded_from"] == "numba" and loaded["compiled"] is False  # numba's cache was warm
