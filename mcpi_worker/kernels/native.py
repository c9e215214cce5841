"""The fused kernels' machine code, loaded without numba: our object cache.

Loading the fused implementation through numba costs a worker most of its fixed cost:
``import numba`` alone is a fifth of a second of CPU, before numba's cache is even
read. The machine code itself does not need numba: compiled once as C-ABI entry points
(``export.py``, numba's ``cfunc``), it is an ordinary relocatable object file that
needs only a few symbols from numba's small C helper modules and the interpreter, on
error paths that the kernels never take. So the process that warms numba's cache
(``warm.py``) also writes that object here, and a worker loads it with LLVM's JIT
linker (``libllvmlite``, through ``llvm_link``: add the object, resolve its symbols, take
the entry points' addresses) and calls it through ``ctypes``, which releases the GIL for the
call as numba's ``nogil`` does. It is the machine code numba's own path runs, under
the same Python loops (``drive.py``), so the counts and the stop checks are the same;
``choice.load_fused`` checks the counts against NumPy again after every load.

A file that is missing, made for another key, truncated, corrupt, or that needs a
symbol this process does not have is refused with the reason (``NativeUnavailable``),
and the caller loads through numba instead. The key is everything the machine code
depends on: the CPU (its name and features: the code uses whatever the host has), the
numba, llvmlite and Python versions, the kernels' sources and this format's version.
Nothing is handed to LLVM before the file's checksum and key match. As for numba's
cache (``numba_cache.py``), the file is machine code that this process will run: its
directory and every directory above it must pass ``numba_cache.directory_refusal`` (no
other user can write there), and the file must be this user's (or root's) and writable
by nobody else. It lives where ``NUMBA_CACHE_DIR`` puts numba's cache, else beside
numba's marker (``cache_directory``).

Importing this module imports only the standard library; ``load`` loads ``libllvmlite``
(``llvm_link``: without importing ``llvmlite.binding`` where it can) and numba's two C
helper extensions, not numba, nor NumPy
(whose import those extensions' module initialisation makes: ``_numba_helpers``). The
buffers the entry points take are any C-contiguous ones (``drive`` makes ``array.array``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import stat
import struct
import sys
from array import array
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from mcpi_worker import numba_cache, numba_marker
from mcpi_worker.kernels import llvm_link

if TYPE_CHECKING:
    from mcpi_worker.kernels.drive import Words

FORMAT_VERSION: Final[int] = numba_marker.OBJECT_FORMAT
"""This file format's version: part of the key, and of the file's name."""

MAGIC: Final[bytes] = b"mcpi-kernels-object\n"

MAX_FILE_BYTES: Final[int] = 16 << 20
"""A larger file is refused unread (the object is some tens of KiB)."""

_HEADER_LENGTH: Final = struct.Struct("<I")

ENTRY_POINTS: Final[Mapping[str, tuple[str, tuple[str, ...]]]] = {
    # name: (result, arguments), in C types: the one description of the entry points'
    # ABI, which export.py compiles (numba types) and load() calls (ctypes).
    "count_outputs": ("i64", ("u64*", "i64", "u64*")),
    "count_range": ("void", ("u64", "u64", "i64", "i64", "i64*", "u64*")),
    "seed_lanes": ("void", ("u64", "u64", "i64", "u64*", "u64*", "u64*", "u64*", "u64*")),
    "step_lanes": ("void", ("i64", "u64*", "u64*", "u64*", "u64*", "i64*", "i64", "i64")),
    "count_short": ("void", ("u64", "u64", "i64", "i64", "i64*", "u64*", "i64*")),
}

_CTYPES: Final[Mapping[str, Any]] = {
    "void": None,
    "i64": ctypes.c_int64,
    "u64": ctypes.c_uint64,
    "u64*": ctypes.c_void_p,
    "i64*": ctypes.c_void_p,
}

_NUMBA_HELPERS: Final[tuple[tuple[str, str], ...]] = (
    # (module, prefix): numba's C extensions whose c_helpers dictionaries give the
    # addresses numba itself registers with LLVM under these names.
    ("numba._helperlib", "numba_"),
    ("numba.core.runtime._nrt_python", "NRT_"),
)


class NativeUnavailable(Exception):
    """The object cache cannot be used here; the message says why, in one line."""


class ObjectMissing(NativeUnavailable):
    """There is simply no file for this process's key (an install from before the object
    cache, a cleaned directory, another CPU): nothing is wrong, it is to be written."""


def sources_digest() -> str:
    """A hash of every kernel source the machine code was compiled from
    (``numba_marker.sources_digest``). Raises ``NativeUnavailable``."""
    try:
        return numba_marker.sources_digest()
    except OSError as error:
        raise NativeUnavailable(f"a kernel source cannot be read ({error.strerror})") from None


def host_key(cpu_name: str, cpu_features: str) -> dict[str, str]:
    """The key an object must carry to be loaded in this process, for a CPU named
    ``cpu_name`` with ``cpu_features`` (llvmlite's words for the host's)."""
    import llvmlite

    return {
        "format": str(FORMAT_VERSION),
        "cpu": cpu_name,
        "cpu_features": cpu_features,
        "host": numba_marker.cpu_identity(),
        "machine": os.uname().machine,
        "python": sys.version,
        "numba": numba_marker.numba_version() or "",
        "llvmlite": llvmlite.__version__,
        "sources": sources_digest(),
    }


def file_name(key: Mapping[str, str]) -> str:
    """The object's file name for ``key`` (``numba_marker.object_file_name``: by the parts
    of it known without llvmlite): another CPU sharing the directory, other sources or
    versions have another file."""
    return numba_marker.object_file_name(key)


def encode(key: Mapping[str, str], symbols: Mapping[str, str], code: bytes) -> bytes:
    """The file: ``MAGIC``, the header's length, the header (JSON: key, entry points'
    symbol names, the object's size and SHA-256), the object."""
    header = json.dumps(
        {
            "key": dict(key),
            "symbols": dict(symbols),
            "size": len(code),
            "sha256": hashlib.sha256(code).hexdigest(),
        },
        sort_keys=True,
    ).encode()
    return MAGIC + _HEADER_LENGTH.pack(len(header)) + header + code


def decode(data: bytes, key: Mapping[str, str]) -> tuple[dict[str, str], bytes]:
    """The entry points' symbols and the object from a file's ``data``, once it is
    whole and made for ``key``. Raises ``NativeUnavailable`` otherwise."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _HEADER_LENGTH.size:
        raise NativeUnavailable("it is not an object cache file of this format")
    at = len(MAGIC) + _HEADER_LENGTH.size
    (length,) = _HEADER_LENGTH.unpack_from(data, len(MAGIC))
    try:
        header = json.loads(data[at : at + length])
    except (UnicodeDecodeError, ValueError):
        raise NativeUnavailable("its header is not whole (truncated or corrupt)") from None
    if not isinstance(header, dict) or not isinstance(header.get("key"), dict):
        raise NativeUnavailable("its header is not this format's")
    if header["key"] != dict(key):
        differ = sorted(name for name in set(key) | set(header["key"]) if header["key"].get(name) != key.get(name))
        raise NativeUnavailable(f"it was made for another {', '.join(differ)}")
    code = data[at + length :]
    symbols = header.get("symbols")
    if len(code) != header.get("size") or hashlib.sha256(code).hexdigest() != header.get("sha256"):
        raise NativeUnavailable(f"the object is not whole ({len(code)} bytes, checksum differs)")
    if not isinstance(symbols, dict) or sorted(symbols) != sorted(ENTRY_POINTS):
        raise NativeUnavailable("its entry points are not this version's")
    if not all(isinstance(name, str) for name in symbols.values()):
        raise NativeUnavailable("its entry points are not this version's")
    return symbols, code


def write(directory: Path, key: Mapping[str, str], symbols: Mapping[str, str], code: bytes) -> Path:
    """Write the object for ``key`` into ``directory`` (whole or not at all: a
    temporary file, renamed into place; mode 600). Returns its path; raises
    ``OSError``."""
    import tempfile  # only the warming process writes

    path = directory / file_name(key)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".mcpi-kernels-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(encode(key, symbols, code))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


_SAME_HOST: Final[tuple[str, ...]] = ("cpu", "cpu_features", "machine")
"""A file whose key has these of ours, and our ``host`` or none (format 1), is this host's."""


def stale_files(directory: Path, key: Mapping[str, str]) -> list[Path]:
    """This host's object cache files in ``directory`` made for another ``key`` (older
    sources or versions: no process here loads them again), and files of that name that
    are not whole. Files for another CPU (a directory shared by several machines) are
    not among them. Reads a header at most of each."""
    ours = file_name(key)
    stale: list[Path] = []
    for path in directory.glob(f"{numba_marker.OBJECT_CACHE_PREFIX}*{numba_marker.OBJECT_CACHE_SUFFIX}"):
        if path.name == ours:
            continue
        try:
            with open(path, "rb") as file:
                head = file.read(len(MAGIC) + _HEADER_LENGTH.size)
                (length,) = _HEADER_LENGTH.unpack_from(head, len(MAGIC))
                other = json.loads(file.read(min(length, 1 << 20)))["key"]
            same_host = all(other.get(name) == key.get(name) for name in _SAME_HOST) and other.get(
                "host", key.get("host")
            ) == key.get("host")
        except (OSError, struct.error, ValueError, TypeError, KeyError, AttributeError):
            same_host = True  # not whole: nobody's
        if same_host:
            stale.append(path)
    return stale


def read(path: Path, *, uid: int | None = None) -> bytes:
    """The file at ``path``, after the checks the module describes. Raises
    ``NativeUnavailable``."""
    missing = f"there is no object cache for this CPU and these sources at {path}"
    refusal = numba_cache.directory_refusal(path.parent, uid=uid)
    if refusal is not None:
        if not path.parent.exists():
            raise ObjectMissing(missing)
        raise NativeUnavailable(f"its directory is unsafe: {refusal}")
    me = os.geteuid() if uid is None else uid
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ObjectMissing(missing) from None
    except OSError as error:
        raise NativeUnavailable(f"{path} cannot be opened ({error.strerror})") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise NativeUnavailable(f"{path} is not a regular file")
        if info.st_uid not in (me, 0):
            raise NativeUnavailable(f"{path} is owned by uid {info.st_uid}, not by this user (uid {me}) or root")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise NativeUnavailable(f"{path} is writable by others (mode {stat.S_IMODE(info.st_mode):04o})")
        if info.st_size > MAX_FILE_BYTES:
            raise NativeUnavailable(f"{path} is too large ({info.st_size} bytes)")
        return file.read(MAX_FILE_BYTES + 1)


_ELF_HEADER: Final = struct.Struct("<16sHHIQQQIHHHHHH")
_SECTION: Final = struct.Struct("<IIQQQQIIQQ")
_SYMBOL: Final = struct.Struct("<IBBHQQ")
_SHT_SYMTAB: Final[int] = 2
_ELF_MACHINES: Final[Mapping[str, int]] = {"x86_64": 62, "aarch64": 183}


_ET_REL: Final[int] = 1
_ET_DYN: Final[int] = 3
_STT_FUNC: Final[int] = 2


def _symbols(code: bytes, kind: int) -> list[tuple[str, int, int, int]]:
    """(name, type, section, value) of each named entry of the symbol tables (``.symtab``)
    of an ELF64 little-endian file of ``kind`` (``_ET_REL``, ``_ET_DYN``) for this
    machine. Raises ``NativeUnavailable`` for anything else, or tables pointing outside it."""
    machine = _ELF_MACHINES.get(os.uname().machine)
    try:
        ident, found, elf_machine, *_, shoff, _, _, _, _, shentsize, shnum, _ = _ELF_HEADER.unpack_from(code)
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1 or found != kind or elf_machine != machine:
            what = "relocatable" if kind == _ET_REL else "shared"
            raise NativeUnavailable(f"the object is not a {what} ELF64 object for this machine")
        sections = [_SECTION.unpack_from(code, shoff + i * shentsize) for i in range(shnum)]
        symbols: list[tuple[str, int, int, int]] = []
        for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
            if sh_type != _SHT_SYMTAB:
                continue
            strings_at, strings_size = sections[link][4], sections[link][5]
            strings = code[strings_at : strings_at + strings_size]
            for at in range(offset + entsize, offset + size, entsize):  # entry 0 is the null symbol
                name_at, info, _, section, value, _ = _SYMBOL.unpack_from(code, at)
                if name_at:
                    end = strings.index(b"\0", name_at)
                    symbols.append((strings[name_at:end].decode(), info & 0xF, section, value))
        return symbols
    except (struct.error, IndexError, ValueError, UnicodeDecodeError):
        raise NativeUnavailable("the object's tables are not whole") from None


def undefined_symbols(code: bytes) -> list[str]:
    """The names an ELF64 little-endian relocatable object for this machine needs from
    outside itself. Raises ``NativeUnavailable`` for anything else, or an object whose
    tables point outside it."""
    return [name for name, _, section, _ in _symbols(code, _ET_REL) if section == 0]


def _numba_helpers(needed: Collection[str] = ()) -> dict[str, int]:
    """The addresses numba registers with LLVM for its C helpers, from its two small C
    extension modules, loaded from numba's package directory without importing numba
    (whose ``__init__`` is the cost this module avoids). Each module's initialisation
    imports NumPy (and builds the table of its helpers), so where the ``needed`` names
    are all in the module file's symbol table, the file is loaded without it
    (``_helpers_uninitialised``); else, or once the module is imported, from its table."""
    try:
        spec = importlib.util.find_spec("numba")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise NativeUnavailable("numba is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    addresses: dict[str, int] = {}
    for module_name, prefix in _NUMBA_HELPERS:
        location = _extension_file(package, module_name)
        module = sys.modules.get(module_name)
        if module is None:
            names = [name for name in needed if name.startswith(prefix)]
            found = _helpers_uninitialised(location, module_name, names)
            if found is not None:
                addresses.update(found)
                continue
            module = _load_extension(location, module_name)
        helpers: Mapping[str, int] = module.c_helpers
        addresses.update({prefix + name: address for name, address in helpers.items() if not name.startswith("_")})
    return addresses


_INITIALISERS: Final[Mapping[str, tuple[str, ...]]] = {
    # What a module's initialisation does for its helpers, NumPy's import left out:
    # numba's runtime sets its allocator (the helpers that allocate use it).
    "numba.core.runtime._nrt_python": ("NRT_MemSys_init",),
}


def _helpers_uninitialised(location: Path, module_name: str, names: Collection[str]) -> dict[str, int] | None:
    """The addresses of the functions ``names`` in the extension at ``location``, loaded
    with ``dlopen`` (``ctypes``) but not initialised as a module: by their offsets from the
    module's exported ``PyInit_`` in the file's symbol table. What the initialisation does
    for the helpers themselves is done (``_INITIALISERS``); its import of NumPy is not.
    None where the table lacks one of them (a stripped build)."""
    entry = "PyInit_" + module_name.rsplit(".", 1)[1]
    initialisers = _INITIALISERS.get(module_name, ())
    try:
        functions = {
            name: value
            for name, kind, section, value in _symbols(location.read_bytes(), _ET_DYN)
            if kind == _STT_FUNC and section != 0
        }
    except (OSError, NativeUnavailable):
        return None
    if not all(name in functions for name in (entry, *initialisers, *names)):
        return None
    library = ctypes.CDLL(str(location))
    origin = ctypes.cast(getattr(library, entry), ctypes.c_void_p).value
    if origin is None:
        return None
    origin -= functions[entry]
    for name in initialisers:
        ctypes.CFUNCTYPE(None)(origin + functions[name])()
    return {name: origin + functions[name] for name in names}


def _extension_file(package: Path, module_name: str) -> Path:
    relative = Path(*module_name.split(".")[1:])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        location = package / relative.with_name(relative.name + suffix)
        if location.is_file():
            return location
    raise NativeUnavailable(f"numba's C extension {module_name} is not where numba keeps it")


def _load_extension(location: Path, module_name: str) -> Any:
    spec = importlib.util.spec_from_file_location(module_name, location)
    if spec is None or spec.loader is None:
        raise NativeUnavailable(f"numba's C extension {module_name} cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _process_symbol(name: str) -> int | None:
    """The address of ``name`` in this process (the interpreter, libc, libm), or None."""
    try:
        return ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, name))
    except ValueError:
        return None


def _address(buffer: Words) -> int:
    """Where a writable, C-contiguous buffer's memory starts (an ``array.array``, a slice of
    one through ``memoryview``, a NumPy array), for a pointer argument of an entry point."""
    if isinstance(buffer, array):
        start: int = buffer.buffer_info()[0]
        return start
    if isinstance(buffer, memoryview):
        return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    address: int = buffer.ctypes.data  # a NumPy array (a test's, or NumPy's state handed over)
    return address


@dataclass(frozen=True, slots=True)
class Loaded:
    compiled: NativeCompiled
    path: Path


class NativeCompiled:
    """``drive.Compiled`` over the entry points of a loaded object, called through
    ``ctypes`` (the GIL released for each call). Keeps the JIT engine that owns the
    machine code alive as long as it is."""

    def __init__(self, functions: Mapping[str, Callable[..., Any]], keep_alive: tuple[Any, ...]) -> None:
        self._count_outputs = functions["count_outputs"]
        self._count_range = functions["count_range"]
        self._seed_lanes = functions["seed_lanes"]
        self._step_lanes = functions["step_lanes"]
        self._count_short = functions["count_short"]
        self._keep_alive = keep_alive

    def count_outputs(self, state: Words, points: int, words: Words) -> int:
        return int(self._count_outputs(_address(state), points, _address(words)))

    def count_range(
        self, seed: int, first: int, streams: int, points: int, counts: Words, work: Words
    ) -> None:
        self._count_range(seed, first, streams, points, _address(counts), _address(work))

    def seed_lanes(
        self,
        seed: int,
        first: int,
        a: Words,
        b: Words,
        c: Words,
        w: Words,
        work: Words,
    ) -> None:
        pointers = (_address(a), _address(b), _address(c), _address(w), _address(work))
        self._seed_lanes(seed, first, len(a), *pointers)

    def step_lanes(
        self,
        a: Words,
        b: Words,
        c: Words,
        w: Words,
        counts: Words,
        steps: int,
        pairs: bool,
    ) -> None:
        self._step_lanes(
            len(a), _address(a), _address(b), _address(c), _address(w), _address(counts), steps, int(pairs)
        )

    def count_short(
        self,
        seed: int,
        first: int,
        streams: int,
        points: int,
        counts: Words,
        work: Words,
        group_counts: Words,
    ) -> None:
        self._count_short(seed, first, streams, points, _address(counts), _address(work), _address(group_counts))


def cache_directory(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the object goes (``numba_marker.object_cache_directory``): the directory
    ``NUMBA_CACHE_DIR`` names, else the kernels' ``__pycache__``, else the user's cache
    directory; None: nowhere."""
    return numba_marker.object_cache_directory(environ)


def load(directory: Path | None = None, *, uid: int | None = None, link: llvm_link.Link | None = None) -> Loaded:
    """Load the object for this process's key from ``directory`` (default:
    ``cache_directory()``), through ``link`` (default: ``llvm_link.link_backend()``).
    Raises ``NativeUnavailable`` with the reason, having handed LLVM nothing unless the
    file passed every check the module describes; ``llvm_link.LinkError`` or llvmlite's
    own where LLVM refuses it."""
    if numba_marker.numba_version() is None:
        raise NativeUnavailable("numba is not installed")
    directory = cache_directory() if directory is None else directory
    if directory is None:
        raise NativeUnavailable("there is no directory to keep it in")
    try:
        llvm = llvm_link.link_backend() if link is None else link
    except ImportError as error:
        raise NativeUnavailable(f"llvmlite cannot be imported ({error})") from None
    key = host_key(*llvm.host_cpu())
    path = directory / file_name(key)
    symbols, code = decode(read(path, uid=uid), key)
    needed = undefined_symbols(code)
    helpers = _numba_helpers(needed)
    for name in needed:
        address = helpers.get(name) or _process_symbol(name)
        if address is None:
            raise NativeUnavailable(f"the object needs {name}, which this process does not have")
        llvm.add_symbol(name, address)
    linked = llvm.link(code, [symbols[name] for name in ENTRY_POINTS])
    functions: dict[str, Callable[..., Any]] = {}
    for name, (result, arguments) in ENTRY_POINTS.items():
        address = linked.addresses[symbols[name]]
        if not address:
            raise NativeUnavailable(f"the object does not define its entry point {name}")
        prototype = ctypes.CFUNCTYPE(_CTYPES[result], *(_CTYPES[a] for a in arguments))
        functions[name] = prototype(address)
    return Loaded(NativeCompiled(functions, linked.keep_alive), path)
