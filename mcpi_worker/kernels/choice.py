"""Which implementation runs the ``numpy`` kernel, and when the fast one is loaded.

Two implementations of one definition (protocol.md §11.2) give the identical count:
``numba-fused`` (``fused.py`` and ``lanes.py``, compiled loops, several times faster)
and ``numpy`` (``numpy_impl.py``, always there). Loading the fused one costs a worker
process CPU: a few hundredths of a second from our object cache of its machine code
(``native.py``, no ``import numba``), a fraction of a second through numba when that
cache is not there (importing numba and taking the machine code from numba's cache;
compiling, after an install, costs far more), which is more than a short run's whole
sampling time (docs/worker.md has the measurements). So the policy
(``MCPI_NUMPY_IMPL``):

- ``auto`` (default): count with NumPy; once this process has counted
  ``SWITCH_AFTER_POINTS`` points, about as long as the load would take to earn
  itself back, load the compiled loop in the background and hand every sample over
  to it, the running one included, at its next block boundary. A short run never
  pays the load; a long one pays it once, after it has run long enough to earn it
  back (the rent-or-buy rule: never worse than the better choice made in hindsight
  by more than the load itself). Only from a warm cache: where numba's cache is cold
  (the first run after an install), compiling (seconds of CPU) would make the run slower
  than NumPy alone, so another process compiles it at the lowest priority
  (``warm.py``) while this one counts on with NumPy, and loads once it is warm.
  A coordinator that knows the run is long says so in its ``hello`` (the size hint,
  protocol.md §5.1, ``expect``): from a hint of at least ``LOAD_AT_ONCE_POINTS`` the
  load starts at once, and the first sample waits for it rather than count on NumPy
  beside it, so a long run counts in the lanes from its first point. Only one sample at
  a time waits: under ``--jobs N`` the others count with NumPy meanwhile, on the cores
  the load (one thread) leaves free.
- ``fused``: load as early as possible: ``prepare`` (``prepare_kernels`` at worker
  start-up) loads it at once; without it, the first sample starts the background load.
  For a coordinator that knows its run is long.
- ``numpy``: never load numba.

The variable is read by ``mcpi_worker.kernel_policy`` (``Policy``,
``policy_from_environment``), a light module the coordinator reads it with too.

The load never runs on a computing thread: a sample goes on with NumPy meanwhile,
polling its stop flag between blocks, so a cancel, end of input or the parent's death
is still seen within milliseconds. Where numba is missing, the load fails, or the
loaded loop does not reproduce NumPy's counts, the log says so once and NumPy stays.
Which implementation counts a point never changes the count, only its speed.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from types import ModuleType
from typing import Final, Protocol

from mcpi_worker.kernel_policy import Policy, object_cache_wanted, policy_from_environment
from mcpi_worker.kernels.base import Continuation, StopCheck, StreamsCounter, kernel_log, never

SWITCH_AFTER_POINTS: Final[int] = 200_000_000
"""Without a size hint, ``auto`` starts loading the compiled loop once a process has
counted this many points with NumPy: about as many as the load, counted in NumPy's time,
is worth (rent until the rent has cost the price, then buy; docs/worker.md has the
measurements)."""

LOAD_AT_ONCE_POINTS: Final[int] = 100_000_000
"""A size hint (``expect``) of at least this many points makes ``auto`` load at once: about
the points after which the load from a warm cache has earned itself back, counted by the
compiled loop instead of NumPy (docs/worker.md, "The size hint", has the measurements)."""

OBJECT_CACHE_LOAD_POINTS: Final[int] = 20_000_000
"""Where our object cache of the machine code is there (``FusedCache.has_object``), a
load takes about a tenth of the CPU it takes through numba, so both thresholds come down
to this: a size hint of this many points loads at once, and without a hint the load
starts once this many points were counted with NumPy (docs/worker.md, "Loading without
numba", has the measurements)."""

WAIT_MIN_POINTS: Final[int] = 1 << 20
"""The fewest points of a sample that waits for a hinted load: a smaller one costs NumPy
no more than a few milliseconds, and the worker's reader thread runs small samples
itself (``server.INLINE_MAX_WORK``), which must never wait for a load."""

WAIT_POLL_S: Final[float] = 0.005
"""How often a sample waiting for a hinted load looks at its stop flag."""

EXIT_WAIT_S: Final[float] = 10.0
"""At interpreter exit, how long to wait for a load still running in the background:
tearing LLVM down under a thread that is inside it could crash the exit."""


class Implementation(StrEnum):
    """What runs the ``numpy`` kernel (the names the welcome and logs report)."""

    NUMBA_FUSED = "numba-fused"
    NUMPY = "numpy"


class FusedUnavailable(Exception):
    """The fused implementation cannot be used here; the message says why, in one line."""


class NumbaNotInstalled(FusedUnavailable):
    """The expected case on a plain install: the ``fast`` extra is not there."""


class ObjectCacheMissing(FusedUnavailable):
    """Our object cache has no file for this process (``native.ObjectMissing``): loaded
    through numba this time, and written by the warming process for the next loads."""


class Counter(Protocol):
    """One implementation's count: ``numpy_impl.count`` or ``fused.count``."""

    def __call__(
        self,
        seed: int,
        stream: int,
        points: int,
        should_stop: StopCheck = never,
        *,
        block_points: int = ...,
    ) -> int: ...


class LoadedFrom(StrEnum):
    """Where a fused implementation's machine code came from (the log says which)."""

    OBJECT_CACHE = "object cache"
    """Our own cache of the object code, loaded without numba (``native.py``)."""
    NUMBA = "numba"
    """numba: imported, its cache read (or the code compiled)."""


@dataclass(frozen=True, slots=True)
class LoadedFused:
    count: Counter
    count_from: Continuation
    """The rest of a sample from an SFC64 state: what a NumPy sample is handed over to."""
    count_streams: StreamsCounter
    """A range of streams, many at once in SIMD lanes, stream set-up included (``lanes``)."""
    load_s: float
    compiled: bool
    """This process compiled the loop (the cache was cold, or there is none)."""
    cache_path: str | None
    """numba's cache directory for it, or the object cache's file; None when it could only
    compile in memory."""
    loaded_from: LoadedFrom = LoadedFrom.NUMBA
    native_refused: str | None = None
    """Why the object cache was not used, when numba was loaded instead."""
    object_missing: bool = False
    """The object cache was not used because it has no file here (``ObjectCacheMissing``):
    not worth a warning; the loader's caller has it written (``NumpyKernel``)."""


Loader = Callable[[], LoadedFused]


class FusedCache(Protocol):
    """numba's on-disk cache of the fused implementation (``warm.NumbaCache``)."""

    def is_warm(self) -> bool:
        """Whether a load in this process takes the machine code from the cache."""
        ...

    def warm(self) -> None:
        """Start filling it off this process, at the lowest priority."""
        ...

    def mark_warm(self) -> None:
        """Note that a load here has filled it (or found it full)."""
        ...

    def has_object(self) -> bool:
        """Whether our object cache of the machine code is there (``native.py``): a load
        costs a tenth of the CPU (``OBJECT_CACHE_LOAD_POINTS``)."""
        ...

    def unavailable(self) -> str | None:
        """Why there is no directory to keep numba's cache in (then every load compiles,
        in memory), or None."""
        ...


class AlwaysWarm:
    """The cache of a loader that has none (a test's fake): loading is all there is."""

    def is_warm(self) -> bool:
        return True

    def warm(self) -> None:
        pass

    def mark_warm(self) -> None:
        pass

    def has_object(self) -> bool:
        return False

    def unavailable(self) -> str | None:
        return None

def load_fused(object_directory: Path | None = None) -> LoadedFused:
    """Load the fused implementation: from our object cache without numba (a few
    hundredths of a second; in ``object_directory``, default ``native.cache_directory``),
    else through numba (``load_numba``); either way ``verify`` it. A file that is there
    but refused (corrupt, unsafe, another user's) is worth a look: one warning line says
    why. One that is simply not there is marked ``object_missing``, without a warning: the
    caller has it written (``NumpyKernel``: the warming process). Raises
    ``NumbaNotInstalled`` without numba, ``FusedUnavailable`` when no loaded loop counts
    as NumPy does. ``MCPI_OBJECT_CACHE=off``: numba only."""
    started = time.perf_counter()
    if not object_cache_wanted():
        return load_numba(started)
    try:
        return load_native(started, object_directory)
    except ObjectCacheMissing as missing:
        loaded = load_numba(started)
        return dataclasses.replace(loaded, native_refused=str(missing), object_missing=True)
    except FusedUnavailable as refused:
        loaded = load_numba(started)  # raises NumbaNotInstalled: then the refusal is moot
        kernel_log().warning(
            "fused_kernel_object_cache_refused",
            reason=str(refused),
            consequence="loaded through numba instead (slower to load); the process that "
            "warms numba's cache writes the object cache: python -m mcpi_worker.kernels.warm",
        )
        return dataclasses.replace(loaded, native_refused=str(refused))


def load_native(started: float | None = None, directory: Path | None = None) -> LoadedFused:
    """The fused implementation from our object cache in ``directory`` (``native.load``),
    ``verify``-ed. Raises ``FusedUnavailable`` with the reason where it cannot be used
    (``ObjectCacheMissing`` where there is no file for this process)."""
    started = time.perf_counter() if started is None else started
    from mcpi_worker.kernels import drive, native
    from mcpi_worker.kernels.checks import verify

    try:
        loaded = native.load(directory)
    except native.ObjectMissing as exc:
        raise ObjectCacheMissing(str(exc)) from None
    except native.NativeUnavailable as exc:
        raise FusedUnavailable(str(exc)) from None
    except Exception as exc:  # llvmlite or LLVM refusing the object: numba's path is left
        raise FusedUnavailable(f"{type(exc).__name__}: {exc}") from None
    compiled = loaded.compiled
    verify(compiled)
    return LoadedFused(
        functools.partial(drive.count, compiled),
        functools.partial(drive.count_from, compiled),
        functools.partial(drive.count_streams, compiled),
        time.perf_counter() - started,
        False,
        str(loaded.path),
        LoadedFrom.OBJECT_CACHE,
    )


def load_numba(started: float | None = None) -> LoadedFused:
    """Import the fused implementation through numba (from numba's cache, or compiled),
    then ``verify`` it. Raises ``NumbaNotInstalled``, ``FusedUnavailable``."""
    started = time.perf_counter() if started is None else started
    from mcpi_worker.kernels.checks import verify

    try:
        from mcpi_worker.kernels import fused, fused_range, lanes
    except ImportError as exc:
        raise NumbaNotInstalled(
            f"numba is not installed ({exc}); install the 'fast' extra for the fused kernel"
        ) from None
    try:
        verify(lanes.NUMBA)
    except FusedUnavailable as wrong:
        if fused.CACHE_PATH is None or not _any_from_numba_cache(fused, fused_range, lanes):
            raise
        # Machine code numba took from its cache and that counts wrong is stale (built
        # against other sources than it was keyed by): left there, every later start would
        # load it again and count with NumPy for good. Removed, the next start compiles.
        from mcpi_worker.numba_marker import discard_numba_cache

        discard_numba_cache(Path(fused.CACHE_PATH))
        raise FusedUnavailable(
            f"{wrong}; numba's cache of the kernels ({fused.CACHE_PATH}) was removed, so the next start compiles them"
        ) from None
    return LoadedFused(
        fused.count,
        fused.count_from,
        lanes.count_streams,
        time.perf_counter() - started,
        fused.COMPILED,
        fused.CACHE_PATH,
    )


def _any_from_numba_cache(*modules: ModuleType) -> bool:
    """Whether any compiled function of ``modules`` was taken from numba's cache."""
    from numba.core.dispatcher import Dispatcher

    return any(
        sum(value.stats.cache_hits.values()) > 0
        for module in modules
        for value in vars(module).values()
        if isinstance(value, Dispatcher)
    )


class _Load(Enum):
    NOT_TRIED = "not tried"
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class NumpyKernelStatus:
    policy: Policy
    implementation: Implementation
    """What counts the next block of points."""
    numpy_points: int
    """Points this process has counted with the NumPy implementation."""
    switch_after_points: int
    fused: LoadedFused | None
    unavailable: str | None
    """Why the fused implementation is not used, once a load was tried and failed."""
    waiting: bool = False
    """A sample is waiting for a load that a size hint started (``expect``)."""


def _import_numpy() -> None:
    """``NumpyKernel._import_numpy_soon``'s thread: the NumPy implementation's module, and
    NumPy with it. A failure here is the first sample's to report, as before."""
    with contextlib.suppress(Exception):
        from mcpi_worker.kernels import numpy_impl  # noqa: F401


class NumpyKernel:
    """The ``numpy`` kernel (a ``Kernel``): one definition, the implementation per the policy.

    ``policy`` None reads ``MCPI_NUMPY_IMPL`` at first use (so that importing this
    package never fails on a bad value; ``prepare`` reports it). ``loader`` is how the
    fused implementation is loaded: tests pass fakes (one that fails as a machine
    without numba does, one that counts its calls, one that takes its time). ``cache``
    is numba's cache as ``auto`` sees it (default: ``warm.NumbaCache`` for the real
    loader, ``AlwaysWarm`` for any other). ``import_numpy`` is what a hint that the samples
    will count with NumPy runs on a thread of its own (default: import it; tests pass one
    that counts its calls). Safe to call from several threads at once.
    """

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        loader: Loader = load_fused,
        switch_after_points: int = SWITCH_AFTER_POINTS,
        load_at_once_points: int = LOAD_AT_ONCE_POINTS,
        object_load_points: int = OBJECT_CACHE_LOAD_POINTS,
        environ: Mapping[str, str] = os.environ,
        cache: FusedCache | None = None,
        import_numpy: Callable[[], None] | None = None,
    ) -> None:
        self._policy = policy
        self._import_numpy = _import_numpy if import_numpy is None else import_numpy
        self._load_at_once_points = load_at_once_points
        self._object_load_points = object_load_points
        self._cheap_load: bool | None = None
        """Whether a load would be from our object cache (``_load_is_cheap``), once looked at."""
        self._switch_settled = False
        self._hinted = False
        """The load was started by a size hint: a sample waits for it (``_await_hinted_load``)."""
        self._waiting = False
        self._waited = threading.local()
        """Per thread: seconds its samples waited for a hinted load (``take_waited_s``)."""
        self._loader = loader
        self._cache = cache
        self._warming = False
        self._next_look = switch_after_points
        self._switch_after_points = switch_after_points
        self._environ = environ
        self._lock = threading.Lock()
        self._load_done = threading.Condition(self._lock)
        self._load = _Load.NOT_TRIED
        self._fused: LoadedFused | None = None  # read without the lock: one atomic load
        self._unavailable: str | None = None
        self._numpy_points = 0
        self._background: threading.Thread | None = None
        self._numpy_import: threading.Thread | None = None

    @property
    def policy(self) -> Policy:
        """The policy in force; raises ``KernelConfigError`` for a bad ``MCPI_NUMPY_IMPL``."""
        if self._policy is None:
            self._policy = policy_from_environment(self._environ)
        return self._policy

    def prepare(self) -> Implementation:
        """Check the policy, and under ``fused`` load now (on this thread: at start-up,
        before anything is served); what counts the next points."""
        if self.policy is Policy.FUSED and self._claim_load():
            self._run_load("MCPI_NUMPY_IMPL=fused, at start-up")
        return self.implementation()

    def expect(self, points: int) -> None:
        """The size hint (protocol.md §5.1): this process expects to count ``points`` in
        all. Under ``auto``, from ``LOAD_AT_ONCE_POINTS`` on (``OBJECT_CACHE_LOAD_POINTS``
        where our object cache is there), start loading the fused implementation now
        (from a warm cache; a cold one starts warming now instead). Where the samples will
        count with NumPy instead (a smaller hint, a cold cache, or ``numpy``), import NumPy
        now (``_import_numpy_soon``). It changes no count, and nothing under ``fused``.
        Quick: it never loads or imports on the calling thread (the worker's reader), and
        looks at a directory at most once. A second hint (the ``hello``'s, after the one
        in the environment: ``constants.EXPECTED_POINTS``) starts nothing more."""
        policy = self.policy
        if policy is Policy.FUSED:
            return
        if policy is Policy.NUMPY or points < min(self._load_at_once_points, self._object_load_points):
            self._import_numpy_soon()
            return
        if points < (self._object_load_points if self._load_is_cheap() else self._load_at_once_points):
            self._import_numpy_soon()
            return
        cache = self._fused_cache()
        if self._nowhere_to_cache(cache):
            self._import_numpy_soon()
            return
        if not cache.is_warm():
            self._warm_cache(cache)
            self._import_numpy_soon()
            return
        with self._lock:
            self._hinted = self._hinted or self._load is _Load.NOT_TRIED
        self._start_background_load(f"MCPI_NUMPY_IMPL=auto, a hint of {points} points expected")

    def _import_numpy_soon(self) -> None:
        """Import NumPy on a thread of its own, once, where the samples will count with it:
        a worker's first sample otherwise pays the whole import after its request came
        (the reader thread runs a small sample itself), while a worker told the run's size
        at its start (``constants.EXPECTED_POINTS``) has the time before its ``hello``
        idle. The first sample finds NumPy imported, or waits on the import underway
        (Python's import lock) rather than starting its own. A daemon thread: a worker
        leaves with ``os._exit``, and one told to stop meanwhile need not wait for it."""
        with self._lock:
            if self._numpy_import is not None:
                return
            self._numpy_import = threading.Thread(target=self._import_numpy, name="mcpi-numpy-import", daemon=True)
        self._numpy_import.start()

    def take_waited_s(self) -> float:
        """Seconds the calling thread's samples spent waiting for a hinted load since its
        last call (then 0 again): time in which no point was counted, which the worker
        leaves out of a result's ``elapsed_s`` (a coordinator sizes its next requests by
        that speed, and a first answer slowed by the load made them tiny)."""
        waited: float = getattr(self._waited, "seconds", 0.0)
        self._waited.seconds = 0.0
        return waited

    def implementation(self) -> Implementation:
        return Implementation.NUMBA_FUSED if self._fused else Implementation.NUMPY

    def implementation_ahead(self) -> Implementation:
        """What counts the next sample of ``WAIT_MIN_POINTS`` or more: the fused
        implementation once loaded, and while a load that a size hint started is under way,
        since such a sample waits for it (``_await_hinted_load``); else NumPy. For the
        ``welcome`` of a worker told the run's size at its start, whose load may still run
        when the ``hello`` comes (a load that then fails leaves NumPy, which the results
        say)."""
        if self._fused is not None:
            return Implementation.NUMBA_FUSED
        with self._lock:
            loading = self._hinted and self._load is _Load.LOADING
        return Implementation.NUMBA_FUSED if loading else Implementation.NUMPY

    def wait_until_loaded(self, timeout: float | None = None) -> Implementation:
        """Wait while a load is in progress (at most ``timeout`` s); what counts now."""
        with self._lock:
            self._load_done.wait_for(lambda: self._load is not _Load.LOADING, timeout)
        return self.implementation()

    def status(self) -> NumpyKernelStatus:
        policy = self.policy
        with self._lock:
            return NumpyKernelStatus(
                policy=policy,
                implementation=self.implementation(),
                numpy_points=self._numpy_points,
                switch_after_points=self._switch_after_points,
                fused=self._fused,
                unavailable=self._unavailable,
                waiting=self._waiting,
            )

    def __call__(self, seed: int, stream: int, points: int, should_stop: StopCheck = never) -> int:
        return self.count(seed, stream, points, should_stop)

    def count_streams(
        self, seed: int, first: int, streams: int, points: int, should_stop: StopCheck = never
    ) -> list[int]:
        """The count of each of ``streams`` streams from ``first`` (a ``StreamsCounter``): by
        the fused implementation's range loop (lanes) once it is loaded, else stream by
        stream (each one counting toward the switch, as a single sample does) until it
        is: a load that completes in the middle of a range takes the rest of it."""
        counts: list[int] = []
        numpy_allowed = self.policy is not Policy.NUMPY
        self._await_hinted_load(streams * points, should_stop)
        while len(counts) < streams:
            if (fused := self._fused) is not None and numpy_allowed:
                done = len(counts)
                return counts + fused.count_streams(seed, first + done, streams - done, points, should_stop)
            counts.append(self.count(seed, first + len(counts), points, should_stop))
        return counts

    def count(
        self,
        seed: int,
        stream: int,
        points: int,
        should_stop: StopCheck = never,
        *,
        implementation: Implementation | None = None,
        block_points: int | None = None,
    ) -> int:
        """The kernel's count. ``implementation`` forces one, start to end (a fused one
        is loaded on this thread if need be, and one that cannot be raises
        ``FusedUnavailable``); None lets the policy choose."""
        counter: Counter
        if implementation is Implementation.NUMBA_FUSED:
            counter = self._require_fused().count
        elif implementation is Implementation.NUMPY:
            from mcpi_worker.kernels import numpy_impl

            counter = numpy_impl.count
        else:
            self._await_hinted_load(points, should_stop)
            counter = self._choose()
        if block_points is None:
            return counter(seed, stream, points, should_stop)
        return counter(seed, stream, points, should_stop, block_points=block_points)

    # ------------------------------------------------------------------ the policy

    def _choose(self) -> Counter:
        policy = self.policy
        if (fused := self._fused) is not None and policy is not Policy.NUMPY:
            return fused.count
        # NumPy is imported by the first sample that counts with it, not before: a worker
        # whose fused kernels come from our object cache may never need it.
        from mcpi_worker.kernels import numpy_impl

        if policy is Policy.NUMPY:
            return numpy_impl.count
        if policy is Policy.FUSED:
            self._start_background_load("MCPI_NUMPY_IMPL=fused")
        return functools.partial(numpy_impl.count, switch=self._switch)

    def _await_hinted_load(self, points: int, should_stop: StopCheck) -> None:
        """While a load that a size hint started runs, let one sample of ``points`` (at
        least ``WAIT_MIN_POINTS``) wait for it, until it ends or ``should_stop`` says so,
        instead of counting with NumPy: the load holds the GIL for most of its time, and
        on a busy core NumPy beside it only delays the lanes. Every other sample goes on
        at once, with NumPy: under ``--jobs N`` a core the load leaves free is not left
        idle."""
        if not self._hinted or points < WAIT_MIN_POINTS:
            return
        with self._lock:
            if self._waiting or self._load is not _Load.LOADING:
                return
            self._waiting = True
            started = time.perf_counter()
            try:
                while self._load is _Load.LOADING and not should_stop():
                    self._load_done.wait(WAIT_POLL_S)
            finally:
                self._waiting = False
                self._waited.seconds = getattr(self._waited, "seconds", 0.0) + time.perf_counter() - started

    def _load_is_cheap(self) -> bool:
        """Whether a load would come from our object cache: it is there, and
        ``MCPI_OBJECT_CACHE`` does not say ``off``. Looked at once per process."""
        if self._cheap_load is None:
            self._cheap_load = object_cache_wanted(self._environ) and self._fused_cache().has_object()
        return self._cheap_load

    def _switch(self, counted: int) -> Continuation | None:
        """After each NumPy block: account for it; start the load when renting stops
        paying (after ``switch_after_points``, or ``OBJECT_CACHE_LOAD_POINTS`` where our
        object cache is there), from a warm cache only (a cold one is warmed by another
        process, and looked at again every quarter of the switch's points); once loaded,
        hand the rest of the sample over."""
        if not self._switch_settled:  # the process's first block: the object cache lowers the switch
            self._switch_settled = True
            if self._load_is_cheap():
                with self._lock:
                    self._next_look = min(self._next_look, self._object_load_points)
        with self._lock:
            self._numpy_points += counted
            if self._fused is not None:
                return self._fused.count_from
            due = self._load is _Load.NOT_TRIED and self._numpy_points >= self._next_look
            if due:
                self._next_look = self._numpy_points + max(1, self._switch_after_points // 4)
            total = self._numpy_points
        if due:
            cache = self._fused_cache()
            if self._nowhere_to_cache(cache):
                return None
            if cache.is_warm():
                self._start_background_load(f"MCPI_NUMPY_IMPL=auto, after {total} points counted with NumPy")
            else:
                self._warm_cache(cache)
        return None

    def _nowhere_to_cache(self, cache: FusedCache) -> bool:
        """Under ``auto``, where numba has no directory to keep its cache in
        (``FusedCache.unavailable``), every load would compile in memory, many times the
        CPU of NumPy's whole run for a run that size: NumPy stays for good, said once.
        Only our object cache could load without compiling, and it is kept in a directory
        too: with none, it has no file. True when the load is not to be tried."""
        if self.policy is not Policy.AUTO or (why := cache.unavailable()) is None:
            return False
        with self._lock:
            first = self._load is _Load.NOT_TRIED
            if first:
                self._load, self._unavailable = _Load.FAILED, why
                self._load_done.notify_all()
        if first:
            kernel_log().warning(
                "fused_kernel_cache_unavailable",
                reason=why,
                implementation=Implementation.NUMPY.value,
                consequence="MCPI_NUMPY_IMPL=auto counts with NumPy: compiling in every worker "
                "process costs more than it saves; set NUMBA_CACHE_DIR to a directory only you "
                "can write (mode 700) to compile once",
            )
        return True

    def _warm_cache(self, cache: FusedCache, *, object_missing: str | None = None) -> None:
        """Have a cold cache warmed by another process, once (``warm.py``); or, where the
        load went through numba because our object cache has no file here
        (``object_missing``, why), have that process write it, which it does too."""
        with self._lock:
            if self._warming:
                return
            self._warming = True
        cache.warm()
        if object_missing is not None:
            kernel_log().info(
                "fused_kernel_object_cache_missing",
                reason=object_missing,
                consequence="loaded through numba this time; a separate process at the lowest "
                "priority writes it for the next loads; to write it at once: python -m mcpi_worker.kernels.warm",
            )
            return
        kernel_log().info(
            "fused_kernel_cache_cold",
            consequence="compiling it in a separate process at the lowest priority; NumPy "
            "counts until it is done; to compile it at once: python -m mcpi_worker.kernels.warm",
        )

    def _fused_cache(self) -> FusedCache:
        if self._cache is None:
            if self._loader is load_fused:
                from mcpi_worker.numba_marker import NumbaCache

                self._cache = NumbaCache()
            else:
                self._cache = AlwaysWarm()
        return self._cache

    # ------------------------------------------------------------------ loading

    def _claim_load(self) -> bool:
        """True for the one caller that is to run the load."""
        with self._lock:
            if self._load is not _Load.NOT_TRIED:
                return False
            self._load = _Load.LOADING
            return True

    def _start_background_load(self, why: str) -> None:
        if not self._claim_load():
            return
        thread = threading.Thread(
            target=self._run_load, args=(why,), name="mcpi-fused-kernel-load", daemon=True
        )
        self._background = thread
        atexit.register(self._wait_for_background_load)
        thread.start()

    def _wait_for_background_load(self) -> None:
        if self._background is not None:
            self._background.join(EXIT_WAIT_S)

    def _run_load(self, why: str) -> None:
        """Load, after ``_claim_load`` said so; on any failure, NumPy stays."""
        try:
            loaded = self._loader()
        except Exception as exc:  # no numba, a compiler error, a wrong count
            reason = str(exc) if isinstance(exc, FusedUnavailable) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._load, self._unavailable = _Load.FAILED, reason
                self._load_done.notify_all()
            expected = self._policy is Policy.AUTO and isinstance(exc, NumbaNotInstalled)
            log = kernel_log()
            (log.info if expected else log.warning)(
                "fused_kernel_unavailable",
                reason=reason,
                wanted=why,
                implementation=Implementation.NUMPY.value,
            )
            return
        except BaseException:  # KeyboardInterrupt in the middle: a later call may try again
            with self._lock:
                self._load = _Load.NOT_TRIED
                self._load_done.notify_all()
            raise
        with self._lock:
            self._load, self._fused = _Load.LOADED, loaded
            self._load_done.notify_all()
            numpy_points = self._numpy_points
        if loaded.cache_path is not None:  # compiled in memory only: the cache is no warmer
            self._fused_cache().mark_warm()
        if loaded.object_missing:
            self._warm_cache(self._fused_cache(), object_missing=loaded.native_refused)
        kernel_log().info(
            "numpy_kernel_implementation",
            implementation=Implementation.NUMBA_FUSED.value,
            why=why,
            numpy_points=numpy_points,  # counted with NumPy before it was loaded
            load_s=round(loaded.load_s, 4),
            loaded_from=loaded.loaded_from.value,
            compiled=loaded.compiled,
            cache_path=loaded.cache_path,
        )

    def _require_fused(self) -> LoadedFused:
        if self._claim_load():
            self._run_load("asked for by name")
        with self._lock:
            while self._load is _Load.LOADING:
                self._load_done.wait()
            if self._fused is None:
                raise FusedUnavailable(self._unavailable or "not loaded")
            return self._fused
