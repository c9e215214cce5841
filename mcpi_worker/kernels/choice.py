"""Which implementation runs the ``numpy`` kernel, and when the fast one is loaded.

Two implementations of one definition (protocol.md §11.2) give the identical count:
``numba-fused`` (``fused.py``, one compiled loop, ~2.4x faster) and ``numpy``
(``numpy_impl.py``, always there). Loading the fused one costs a worker process
~0.25 s of CPU (importing numba and taking the machine code from numba's cache; the
first process after an install also compiles, ~0.2 s more), which is more than a
short run's whole sampling time. So the policy (``MCPI_NUMPY_IMPL``):

- ``auto`` (default): count with numpy until this process has counted
  ``SWITCH_AFTER_POINTS`` points, about as much numpy time as the load saves
  afterwards; then load the fused loop before the next sample of at least
  ``SWITCH_MIN_SAMPLE_POINTS`` and use it from then on. A short run never pays the
  load; a long one pays it once, when it has already run long enough to earn it back
  (the classic rent-or-buy rule: never more than the load worse than either choice
  made in hindsight). A single sample that big loads first.
- ``fused``: load before the first sample (``prepare_kernels`` at start-up loads it at
  once): for a coordinator that knows its run is long.
- ``numpy``: never load numba.

Where numba is missing, or the load fails, or the loaded loop does not reproduce the
numpy implementation's counts, the worker says so once in its log and keeps numpy.
Which implementation runs a sample never changes its count, only its speed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final, Protocol

import structlog

from mcpi_worker.kernels import numpy_impl
from mcpi_worker.kernels.base import StopCheck, never

log = structlog.get_logger("mcpi_worker")

ENVIRONMENT_VARIABLE: Final[str] = "MCPI_NUMPY_IMPL"

SWITCH_AFTER_POINTS: Final[int] = 200_000_000
"""``auto`` loads the fused loop once a process has counted this many points with
numpy (~0.5 s of numpy work here). Loading costs ~0.25 s with a warm cache; each
point counted fused afterwards saves ~1.5 ns (benchmarks/kernel.py): the load is
earned back after ~1.7e8 points, so this is where renting stops paying."""

SWITCH_MIN_SAMPLE_POINTS: Final[int] = 1 << 20
"""``auto`` loads only before a sample at least this big (~3 ms of numpy work), so a
small sample, which the worker's reader thread may compute itself, never waits for
the load and never leaves the reader deaf to a cancel for that long."""


class Policy(StrEnum):
    """What ``MCPI_NUMPY_IMPL`` asks for."""

    AUTO = "auto"
    FUSED = "fused"
    NUMPY = "numpy"


class Implementation(StrEnum):
    """What runs the ``numpy`` kernel (the names the welcome and logs report)."""

    NUMBA_FUSED = "numba-fused"
    NUMPY = "numpy"


class KernelConfigError(ValueError):
    """``MCPI_NUMPY_IMPL`` holds something else than a policy name (one-line message)."""


class FusedUnavailable(Exception):
    """The fused implementation cannot be used here; the message says why, in one line."""


class NumbaNotInstalled(FusedUnavailable):
    """The expected case on a plain install: the ``fast`` extra is not there."""


def policy_from_environment(environ: Mapping[str, str] = os.environ) -> Policy:
    text = environ.get(ENVIRONMENT_VARIABLE, "").strip().lower() or Policy.AUTO.value
    try:
        return Policy(text)
    except ValueError:
        choices = ", ".join(p.value for p in Policy)
        raise KernelConfigError(
            f"{ENVIRONMENT_VARIABLE} must be one of {choices}, got {environ[ENVIRONMENT_VARIABLE]!r}"
        ) from None


class Counter(Protocol):
    """One implementation's count: ``numpy_impl.count`` or ``fused.count``."""

    def __call__(
        self, seed: int, stream: int, points: int, should_stop: StopCheck = never, *,
        block_points: int = ...,
    ) -> int: ...


@dataclass(frozen=True, slots=True)
class LoadedFused:
    count: Counter
    load_s: float
    compiled: bool
    """This process compiled the loop (the cache was cold, or there is none)."""
    cache_path: str | None
    """numba's cache directory for it; None when it could only compile in memory."""


Loader = Callable[[], LoadedFused]

_VERIFY_RUNS: Final[tuple[tuple[int, int, int, int], ...]] = (
    # seed, stream, points, block_points: across the loop's buffer and its blocks.
    (12345, 0, 100_003, 65_536),
    (2**64 - 1, 2**64 - 1, 4_099, 1_000),
)


def verify(count: Counter) -> None:
    """Raise ``FusedUnavailable`` unless ``count`` gives the numpy implementation's counts
    (a few milliseconds, across the compiled loop's buffer and blocks): a loop that a
    compiler got wrong on some machine is never used."""
    for seed, stream, points, block_points in _VERIFY_RUNS:
        ours = count(seed, stream, points, block_points=block_points)
        reference = numpy_impl.count(seed, stream, points)
        if ours != reference:
            raise FusedUnavailable(
                f"the compiled loop counted {ours} inside for seed {seed}, stream {stream}, "
                f"{points} points, where the numpy implementation counts {reference}"
            )


def load_fused() -> LoadedFused:
    """Import the fused implementation (numba), then ``verify`` it."""
    started = time.perf_counter()
    try:
        from mcpi_worker.kernels import fused
    except ImportError as exc:
        raise NumbaNotInstalled(
            f"numba is not installed ({exc}); install the 'fast' extra for the fused kernel"
        ) from None
    verify(fused.count)
    return LoadedFused(fused.count, time.perf_counter() - started, fused.COMPILED, fused.CACHE_PATH)


class _Load(Enum):
    NOT_TRIED = "not tried"
    LOADING = "loading"
    LOADED = "loaded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class NumpyKernelStatus:
    policy: Policy
    implementation: Implementation
    """What runs the next big sample."""
    numpy_points: int
    """Points this process has counted with the numpy implementation."""
    switch_after_points: int
    fused: LoadedFused | None
    unavailable: str | None
    """Why the fused implementation is not used, once a load was tried and failed."""


class NumpyKernel:
    """The ``numpy`` kernel (a ``Kernel``): one definition, the implementation per the policy.

    ``policy`` None reads ``MCPI_NUMPY_IMPL`` at first use (so that importing this
    package never fails on a bad value; ``prepare`` reports it). ``loader`` is how the
    fused implementation is loaded: tests pass fakes (one that fails as a machine
    without numba does, one that counts its calls). Thread-safe: while one thread
    loads, the others go on with numpy.
    """

    def __init__(
        self,
        policy: Policy | None = None,
        *,
        loader: Loader = load_fused,
        switch_after_points: int = SWITCH_AFTER_POINTS,
        switch_min_sample_points: int = SWITCH_MIN_SAMPLE_POINTS,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._policy = policy
        self._loader = loader
        self._switch_after_points = switch_after_points
        self._switch_min_sample_points = switch_min_sample_points
        self._environ = environ
        self._lock = threading.Lock()
        self._load_done = threading.Condition(self._lock)
        self._load = _Load.NOT_TRIED
        self._fused: LoadedFused | None = None
        self._unavailable: str | None = None
        self._numpy_points = 0

    @property
    def policy(self) -> Policy:
        """The policy in force; raises ``KernelConfigError`` for a bad ``MCPI_NUMPY_IMPL``."""
        if self._policy is None:
            self._policy = policy_from_environment(self._environ)
        return self._policy

    def prepare(self) -> Implementation:
        """Check the policy, and under ``fused`` load now; what runs the next big sample."""
        if self.policy is Policy.FUSED:
            self._try_load("MCPI_NUMPY_IMPL=fused")
        return self.implementation()

    def implementation(self) -> Implementation:
        with self._lock:
            return Implementation.NUMBA_FUSED if self._fused else Implementation.NUMPY

    def status(self) -> NumpyKernelStatus:
        policy = self.policy
        with self._lock:
            return NumpyKernelStatus(
                policy=policy,
                implementation=(
                    Implementation.NUMBA_FUSED if self._fused else Implementation.NUMPY
                ),
                numpy_points=self._numpy_points,
                switch_after_points=self._switch_after_points,
                fused=self._fused,
                unavailable=self._unavailable,
            )

    def __call__(
        self, seed: int, stream: int, points: int, should_stop: StopCheck = never
    ) -> int:
        return self.count(seed, stream, points, should_stop)

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
        """The kernel's count. ``implementation`` forces one (a fused one that cannot
        be loaded raises ``FusedUnavailable``); None lets the policy choose."""
        if implementation is Implementation.NUMBA_FUSED:
            counter = self._require_fused().count
        elif implementation is Implementation.NUMPY:
            counter = numpy_impl.count
        else:
            counter = self._choose(points)
        if block_points is None:
            return counter(seed, stream, points, should_stop)
        return counter(seed, stream, points, should_stop, block_points=block_points)

    def _choose(self, points: int) -> Counter:
        policy = self.policy
        if policy is Policy.NUMPY:
            return numpy_impl.count
        with self._lock:
            if self._fused is not None:
                return self._fused.count
            wanted = self._load is _Load.NOT_TRIED and (
                policy is Policy.FUSED
                or (
                    points >= self._switch_min_sample_points
                    and self._numpy_points + points >= self._switch_after_points
                )
            )
            if not wanted:  # not yet, failed before, or another thread is loading
                self._numpy_points += points
                return numpy_impl.count
        why = (
            f"MCPI_NUMPY_IMPL={policy.value}"
            if policy is Policy.FUSED
            else f"MCPI_NUMPY_IMPL=auto, after {self._numpy_points + points} points"
        )
        loaded = self._try_load(why)
        if loaded is None:
            with self._lock:
                self._numpy_points += points
            return numpy_impl.count
        return loaded.count

    def _try_load(self, why: str) -> LoadedFused | None:
        """The fused implementation, loading it if nobody has tried yet; None if it
        failed, or while another thread is loading it (this one does not wait)."""
        with self._lock:
            if self._load is not _Load.NOT_TRIED:
                return self._fused
            self._load = _Load.LOADING
        try:
            loaded = self._loader()
        except Exception as exc:  # no numba, a compiler error, a wrong count: keep numpy
            reason = str(exc) if isinstance(exc, FusedUnavailable) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._load, self._unavailable = _Load.FAILED, reason
                self._load_done.notify_all()
            expected = self._policy is Policy.AUTO and isinstance(exc, NumbaNotInstalled)
            (log.info if expected else log.warning)(
                "fused_kernel_unavailable",
                reason=reason,
                wanted=why,
                implementation=Implementation.NUMPY.value,
            )
            return None
        except BaseException:  # KeyboardInterrupt mid-import: let a later call try again
            with self._lock:
                self._load = _Load.NOT_TRIED
                self._load_done.notify_all()
            raise
        with self._lock:
            self._load, self._fused = _Load.LOADED, loaded
            self._load_done.notify_all()
        log.info(
            "numpy_kernel_implementation",
            implementation=Implementation.NUMBA_FUSED.value,
            why=why,
            load_s=round(loaded.load_s, 4),
            compiled=loaded.compiled,
            cache_path=loaded.cache_path,
        )
        return loaded

    def _require_fused(self) -> LoadedFused:
        while (loaded := self._try_load("asked for by name")) is None:
            with self._lock:
                while self._load is _Load.LOADING:
                    self._load_done.wait()
                if self._load is _Load.FAILED:
                    raise FusedUnavailable(self._unavailable)
        return loaded
