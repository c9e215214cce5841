"""The few LLVM operations ``native.load`` needs, two ways: through ``llvmlite.binding``, or
through the same library's C entry points called with ``ctypes`` directly.

What our object cache needs from LLVM is small: the host CPU's name and features (part of
the file's key), a symbol table entry for each helper the object calls, and MCJIT to link
the object in memory and give its entry points' addresses. ``llvmlite.binding`` does each
of these in one call into ``libllvmlite``, but importing it first imports its whole Python
layer (every wrapper module, ``llvmlite.ir``, ``importlib.resources``, ``tempfile``,
``zipfile``, ``platform``): several times the CPU of loading the library itself, paid by
every worker before its first count, while two workers share two cores with their
coordinator's own start (``benchmarks/sched_timeline.py`` shows each worker's loading
thread; ``benchmarks/object_load.py`` times a load both ways).

So where llvmlite is a version whose C signatures for these entry points are the ones
written here (``DIRECT_VERSIONS``, checked against its sources: the argument and result
types below are llvmlite's own ``argtypes``/``restype`` for them), ``link_backend`` loads
``libllvmlite`` with ``ctypes`` and calls them as llvmlite's wrappers do; elsewhere, or once
``llvmlite.binding`` is imported in this process anyway (then its lock serialises every
call into LLVM, and nothing is saved), it takes ``llvmlite.binding``. Both give the same
key, the same symbols and the same machine code; ``choice.load_native`` checks the counts
after either (``checks.verify``).

Nothing is freed: the engine owns the machine code, which the process runs until it exits.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

DIRECT_VERSIONS: Final[frozenset[str]] = frozenset({"0.50"})
"""llvmlite's major.minor versions whose C entry points ``DirectLink`` calls, with the
signatures written in ``_SIGNATURES``, checked against that version's ``llvmlite.binding``."""

_P = ctypes.c_void_p
_S = ctypes.c_char_p
_OUT = ctypes.POINTER(ctypes.c_char_p)
_SIGNATURES: Final[Mapping[str, tuple[Any, tuple[Any, ...] | None]]] = {
    # name: (restype, argtypes), as llvmlite.binding declares them (pointers to LLVM
    # objects as plain void pointers: they are only handed back; None: undeclared there
    # too, the arguments are passed as ctypes objects; a void result as None, where
    # llvmlite leaves ctypes' default int).
    "LLVMPY_DisposeString": (None, None),
    "LLVMPY_GetHostCPUName": (None, (_OUT,)),
    "LLVMPY_GetHostCPUFeatures": (ctypes.c_int, (_OUT,)),
    "LLVMPY_AddSymbol": (None, (_S, _P)),
    "LLVMPY_InitializeNativeTarget": (None, None),
    "LLVMPY_InitializeNativeAsmPrinter": (None, None),
    "LLVMPY_GetDefaultTargetTriple": (None, (_OUT,)),
    "LLVMPY_GetTargetFromTriple": (_P, (_S, _OUT)),
    "LLVMPY_CreateTargetMachine": (
        _P,
        (_P, _S, _S, _S, ctypes.c_int, _S, _S, ctypes.c_int, ctypes.c_int, _S),
    ),
    "LLVMPY_GetGlobalContext": (_P, None),
    "LLVMPY_ParseAssembly": (_P, (_P, _S, _OUT)),
    "LLVMPY_CreateMCJITCompiler": (_P, (_P, _P, ctypes.c_bool, _OUT)),
    "LLVMPY_CreateObjectFile": (_P, (_S, ctypes.c_size_t)),
    "LLVMPY_MCJITAddObjectFile": (None, (_P, _P)),
    "LLVMPY_FinalizeObject": (None, (_P,)),
    "LLVMPY_GetFunctionAddress": (ctypes.c_uint64, (_P, _S)),
}


class LinkError(Exception):
    """LLVM refused a step of the link; the message is LLVM's, or says which step."""


class Linked:
    """The entry points' addresses in a linked object, and what keeps its code alive."""

    __slots__ = ("addresses", "keep_alive")

    def __init__(self, addresses: dict[str, int], keep_alive: tuple[object, ...]) -> None:
        self.addresses = addresses
        self.keep_alive = keep_alive


class Link(Protocol):
    """What ``native.load`` asks of LLVM."""

    def host_cpu(self) -> tuple[str, str]:
        """The host CPU's name and its features as llvmlite's ``FeatureMap.flatten()``
        spells them (sorted, ``+name``/``-name``, comma-separated)."""
        ...

    def add_symbol(self, name: str, address: int) -> None:
        """Let linked code find ``name`` at ``address``."""
        ...

    def link(self, code: bytes, symbols: Iterable[str]) -> Linked:
        """Link the relocatable object ``code`` with MCJIT; the address of each of
        ``symbols`` (0 where it is not defined). Raises ``LinkError`` or llvmlite's own."""
        ...


def flatten_features(features: str) -> str:
    """LLVM's ``+a,-b,...`` feature list as ``FeatureMap.flatten()`` gives it: one entry a
    name (the last wins), sorted by name."""
    flags: dict[str, str] = {}
    for feature in features.split(","):
        if feature:
            flags[feature[1:]] = feature[0]
    return ",".join(f"{flag}{name}" for name, flag in sorted(flags.items()))


class BindingLink:
    """Through ``llvmlite.binding`` (imported on creation)."""

    def __init__(self) -> None:
        import llvmlite.binding

        self._llvm: Any = llvmlite.binding

    def host_cpu(self) -> tuple[str, str]:
        llvm = self._llvm
        return str(llvm.get_host_cpu_name()), str(llvm.get_host_cpu_features().flatten())

    def add_symbol(self, name: str, address: int) -> None:
        self._llvm.add_symbol(name, address)

    def link(self, code: bytes, symbols: Iterable[str]) -> Linked:
        llvm = self._llvm
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        machine = llvm.Target.from_default_triple().create_target_machine(jit=True)
        module = llvm.parse_assembly("")
        engine = llvm.create_mcjit_compiler(module, machine)
        engine.add_object_file(llvm.ObjectFileRef.from_data(code))
        engine.finalize_object()
        addresses = {name: int(engine.get_function_address(name)) for name in symbols}
        return Linked(addresses, (engine, machine, module))


class DirectLink:
    """``libllvmlite``'s entry points through ``ctypes``, as ``llvmlite.binding`` calls them
    (``DIRECT_VERSIONS``). Raises ``OSError`` if the library cannot be loaded, and
    ``AttributeError`` if it lacks an entry point."""

    def __init__(self, library_path: str) -> None:
        library = ctypes.CDLL(library_path)
        self._functions: dict[str, Any] = {}
        for name, (result, arguments) in _SIGNATURES.items():
            function = getattr(library, name)
            function.restype = result
            function.argtypes = arguments
            self._functions[name] = function

    def _string(self, name: str, *arguments: object) -> tuple[str, object]:
        """Call ``name`` with an output string last; (the string, the call's result)."""
        out = ctypes.c_char_p(None)
        result = self._functions[name](*arguments, ctypes.byref(out))
        try:
            return (out.value or b"").decode(), result
        finally:
            if out.value is not None:
                self._functions["LLVMPY_DisposeString"](out)

    def host_cpu(self) -> tuple[str, str]:
        name, _ = self._string("LLVMPY_GetHostCPUName")
        features, known = self._string("LLVMPY_GetHostCPUFeatures")
        return name, flatten_features(features) if known else ""

    def add_symbol(self, name: str, address: int) -> None:
        self._functions["LLVMPY_AddSymbol"](name.encode(), address)

    def link(self, code: bytes, symbols: Iterable[str]) -> Linked:
        call = self._functions
        call["LLVMPY_InitializeNativeTarget"]()
        call["LLVMPY_InitializeNativeAsmPrinter"]()
        triple, _ = self._string("LLVMPY_GetDefaultTargetTriple")
        error, target = self._string("LLVMPY_GetTargetFromTriple", triple.encode())
        if not target:
            raise LinkError(f"no LLVM target for {triple}: {error}")
        machine = call["LLVMPY_CreateTargetMachine"](
            target, triple.encode(), b"", b"", 2, b"default", b"jitdefault", 0, 1, b""
        )
        if not machine:
            raise LinkError("LLVM cannot create a target machine")
        error, module = self._string("LLVMPY_ParseAssembly", call["LLVMPY_GetGlobalContext"](), b"")
        if not module or error:
            raise LinkError(f"LLVM cannot make an empty module: {error}")
        use_own_memory_manager = os.uname().machine.lower() in ("arm64", "aarch64")  # as llvmlite does
        error, engine = self._string("LLVMPY_CreateMCJITCompiler", module, machine, use_own_memory_manager)
        if not engine:
            raise LinkError(f"LLVM cannot create its JIT: {error}")
        object_file = call["LLVMPY_CreateObjectFile"](code, len(code))
        if not object_file:
            raise LinkError("LLVM cannot read the object")
        call["LLVMPY_MCJITAddObjectFile"](engine, object_file)
        call["LLVMPY_FinalizeObject"](engine)
        addresses = {name: int(call["LLVMPY_GetFunctionAddress"](engine, name.encode())) for name in symbols}
        return Linked(addresses, (code,))


def link_backend() -> Link:
    """``DirectLink`` where llvmlite is a version of ``DIRECT_VERSIONS``, ``llvmlite.binding``
    is not imported in this process and the library loads with every entry point, else
    ``BindingLink``. Raises ``ImportError`` where llvmlite is not installed, or what
    ``llvmlite.binding`` raises where its library cannot be loaded."""
    import sys

    import llvmlite

    if "llvmlite.binding" not in sys.modules and direct_version(llvmlite.__version__):
        from llvmlite.utils import get_library_name

        try:
            return DirectLink(os.path.join(os.path.dirname(llvmlite.__file__), "binding", get_library_name()))
        except (OSError, AttributeError):
            pass  # llvmlite.binding finds its library by importlib.resources, and says why not
    return BindingLink()


def direct_version(version: str) -> bool:
    """Whether llvmlite ``version`` is one ``DirectLink`` may call (its major.minor is in
    ``DIRECT_VERSIONS``)."""
    return ".".join(version.split(".")[:2]) in DIRECT_VERSIONS
