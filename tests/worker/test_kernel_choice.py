"""Which implementation runs the numpy kernel: the policy, the fallback, the hand-over.

``NumpyKernel`` takes its loader as a parameter: the fakes here stand in for a
machine without numba, a loader that fails, one that takes its time, and one that
records each call, so the rules are checked without loading anything.
tests/worker/test_kernel_worker.py checks the same against real worker processes.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from structlog.testing import capture_logs

from mcpi_worker import kernels
from mcpi_worker.kernel_policy import ENVIRONMENT_VARIABLE, policy_from_environment
from mcpi_worker.kernels import (
    KERNELS,
    Cancelled,
    FusedUnavailable,
    Implementation,
    KernelConfigError,
    NumpyKernel,
    Policy,
    numpy_impl,
)
from mcpi_worker.kernels.base import StopCheck, never
from mcpi_worker.kernels.choice import WAIT_MIN_POINTS, LoadedFused, Loader, NumbaNotInstalled

TIMEOUT = 30


def count_from_state(state: np.ndarray, points: int) -> int:
    """protocol.md §11.2 from an SFC64 state, written out again with plain NumPy."""
    generator = np.random.SFC64()
    generator.state = {"bit_generator": "SFC64", "state": {"state": state}, "has_uint32": 0, "uinteger": 0}
    words = generator.random_raw(points)
    x = ((words & np.uint64(0xFFFFFFFF)) >> np.uint64(8)).astype(np.float32)
    y = (words >> np.uint64(40)).astype(np.float32)
    return int(np.count_nonzero(x * x + y * y < np.float32(2.0**48)))


class FakeFused:
    """A stand-in for the compiled implementation that keeps every call."""

    def __init__(self) -> None:
        self.loads = 0
        self.calls: list[int] = []
        self.handed_over: list[int] = []

    def load(self) -> LoadedFused:
        self.loads += 1
        return LoadedFused(
            self.count, self.count_from, self.count_streams, load_s=0.0, compiled=False, cache_path="/cache"
        )

    def count(
        self, seed: int, stream: int, points: int, should_stop: StopCheck = never, *, block_points: int = 1
    ) -> int:
        self.calls.append(points)
        return numpy_impl.count(seed, stream, points, should_stop)

    def count_from(self, state: np.ndarray, points: int, should_stop: StopCheck) -> int:
        self.handed_over.append(points)
        return count_from_state(state, points)

    def count_streams(self, seed: int, first: int, streams: int, points: int, should_stop: StopCheck) -> list[int]:
        self.calls.append(streams * points)
        return [numpy_impl.count(seed, first + i, points) for i in range(streams)]


def failing(exc: Exception) -> Loader:
    calls = []

    def load() -> LoadedFused:
        calls.append(1)
        if len(calls) > 1:
            raise AssertionError("a failed load is not tried again")
        raise exc

    return load


def never_load() -> LoadedFused:
    raise AssertionError("this policy must not load the fused implementation")


def held(load: Loader) -> tuple[Loader, threading.Event, threading.Event]:
    """``load`` held up: the loader, an event set once it is loading, one that releases it."""
    loading, release = threading.Event(), threading.Event()

    def slow_load() -> LoadedFused:
        loading.set()
        assert release.wait(TIMEOUT)
        return load()

    return slow_load, loading, release


def auto(fake_loader: Loader, switch_after_points: int) -> NumpyKernel:
    return NumpyKernel(Policy.AUTO, loader=fake_loader, switch_after_points=switch_after_points)


# ------------------------------------------------------------------ MCPI_NUMPY_IMPL


@pytest.mark.parametrize(
    ("value", "policy"),
    [
        (None, Policy.AUTO),
        ("", Policy.AUTO),
        ("auto", Policy.AUTO),
        (" Fused\n", Policy.FUSED),
        ("numpy", Policy.NUMPY),
    ],
)
def test_policy_from_environment(value: str | None, policy: Policy) -> None:
    environ = {} if value is None else {ENVIRONMENT_VARIABLE: value}
    assert policy_from_environment(environ) is policy


def test_a_bad_policy_is_one_clear_line_at_first_use() -> None:
    environ = {ENVIRONMENT_VARIABLE: "cuda"}
    kernel = NumpyKernel(environ=environ, loader=never_load)  # constructing it is fine
    with pytest.raises(KernelConfigError) as caught:
        kernel.prepare()
    assert str(caught.value) == "MCPI_NUMPY_IMPL must be one of auto, fused, numpy, got 'cuda'"
    with pytest.raises(KernelConfigError):
        kernel(1, 0, 10, never)


# ------------------------------------------------------------------ auto


def test_auto_counts_with_numpy_until_the_switch_then_loads_once() -> None:
    fake = FakeFused()
    kernel = auto(fake.load, switch_after_points=1000)
    assert kernel(1, 0, 600, never) == numpy_impl.count(1, 0, 600)
    kernel(1, 1, 350, never)  # 950 points counted: still renting
    assert (fake.loads, kernel.implementation()) == (0, Implementation.NUMPY)
    assert kernel(1, 2, 100, never) == numpy_impl.count(1, 2, 100)  # 1050: the load starts
    assert kernel.wait_until_loaded(TIMEOUT) is Implementation.NUMBA_FUSED
    kernel(1, 3, 5, never)
    assert (fake.loads, fake.calls) == (1, [5])
    status = kernel.status()
    assert (status.policy, status.numpy_points, status.unavailable) == (Policy.AUTO, 1050, None)


def test_a_running_sample_is_handed_over_at_a_block_boundary_with_the_same_count() -> None:
    fake = FakeFused()
    slow_load, loading, release = held(fake.load)
    kernel = auto(slow_load, switch_after_points=100)
    polls = [0]

    def should_stop() -> bool:
        polls[0] += 1
        if polls[0] == 3:  # blocks 1 and 2 counted; the load started after block 1
            assert loading.is_set() and kernel.implementation() is Implementation.NUMPY
            release.set()
            assert kernel.wait_until_loaded(TIMEOUT) is Implementation.NUMBA_FUSED
        return False

    inside = kernel.count(5, 0, 10_000, should_stop, block_points=100)
    assert inside == numpy_impl.count(5, 0, 10_000)
    assert fake.handed_over == [10_000 - 300]  # the rest, after block 3
    assert kernel.status().numpy_points == 300


def test_only_points_actually_counted_bring_the_load_nearer() -> None:
    """A huge sample cancelled at once starts no load: it counted two blocks."""
    kernel = auto(never_load, switch_after_points=10**9)
    polls = [0]

    def should_stop() -> bool:
        polls[0] += 1
        return polls[0] == 3

    with pytest.raises(Cancelled):
        kernel(1, 0, 10**12, should_stop)
    assert kernel.status().numpy_points == 2 * numpy_impl.BLOCK_POINTS


def test_numpy_policy_never_loads() -> None:
    kernel = NumpyKernel(Policy.NUMPY, loader=never_load, switch_after_points=1)
    assert kernel.prepare() is Implementation.NUMPY
    assert kernel(1, 0, 5000, never) == numpy_impl.count(1, 0, 5000)
    assert kernel.wait_until_loaded(TIMEOUT) is Implementation.NUMPY


def test_fused_policy_loads_at_prepare() -> None:
    fake = FakeFused()
    kernel = NumpyKernel(Policy.FUSED, loader=fake.load)
    assert kernel.prepare() is Implementation.NUMBA_FUSED
    assert fake.loads == 1
    kernel(1, 0, 3, never)
    assert fake.calls == [3]


def test_fused_policy_without_prepare_starts_loading_at_the_first_sample() -> None:
    fake = FakeFused()
    slow_load, loading, release = held(fake.load)
    kernel = NumpyKernel(Policy.FUSED, loader=slow_load)
    # Not held up by the load: NumPy counts while it runs.
    assert kernel(1, 0, 1000, never) == numpy_impl.count(1, 0, 1000)
    assert loading.wait(TIMEOUT)
    assert kernel(2, 0, 1000, never) == numpy_impl.count(2, 0, 1000)
    release.set()
    assert kernel.wait_until_loaded(TIMEOUT) is Implementation.NUMBA_FUSED
    kernel(1, 0, 7, never)
    assert (fake.loads, fake.calls) == (1, [7])


# ------------------------------------------------------------------ fallback


@pytest.mark.parametrize(("policy", "level"), [(Policy.AUTO, "info"), (Policy.FUSED, "warning")])
def test_without_numba_numpy_runs_and_it_is_said_once(policy: Policy, level: str) -> None:
    """A machine without the fast extra: expected under auto (info), not under fused."""
    missing = NumbaNotInstalled("numba is not installed (No module named 'numba')")
    kernel = NumpyKernel(policy, loader=failing(missing), switch_after_points=100)
    with capture_logs() as logs:
        counts = [kernel(5, stream, 1000, never) for stream in range(3)]
        kernel.wait_until_loaded(TIMEOUT)
        counts += [kernel(5, stream, 1000, never) for stream in range(3, 5)]
    assert counts == [numpy_impl.count(5, stream, 1000) for stream in range(5)]
    assert kernel.implementation() is Implementation.NUMPY
    said = [entry for entry in logs if entry["event"] == "fused_kernel_unavailable"]
    assert len(said) == 1
    assert said[0]["log_level"] == level and "not installed" in said[0]["reason"]
    assert kernel.status().unavailable == str(missing)


def test_a_loader_that_crashes_leaves_numpy_running() -> None:
    kernel = auto(failing(OSError("LLVM ran out of memory")), switch_after_points=1)
    with capture_logs() as logs:
        assert kernel(5, 0, 1000, never) == numpy_impl.count(5, 0, 1000)
        assert kernel.wait_until_loaded(TIMEOUT) is Implementation.NUMPY
    (said,) = [entry for entry in logs if entry["event"] == "fused_kernel_unavailable"]
    assert said["log_level"] == "warning" and said["reason"] == "OSError: LLVM ran out of memory"


def test_asking_for_fused_by_name_where_it_cannot_load_raises() -> None:
    kernel = NumpyKernel(Policy.AUTO, loader=failing(NumbaNotInstalled("numba is not installed")))
    with pytest.raises(FusedUnavailable, match="not installed"):
        kernel.count(1, 0, 10, implementation=Implementation.NUMBA_FUSED)
    with pytest.raises(FusedUnavailable, match="not installed"):  # remembered, not retried
        kernel.count(1, 0, 10, implementation=Implementation.NUMBA_FUSED)
    assert kernel.count(1, 0, 10, implementation=Implementation.NUMPY) == numpy_impl.count(1, 0, 10)


def test_asking_by_name_waits_for_a_load_in_progress() -> None:
    fake = FakeFused()
    slow_load, loading, release = held(fake.load)
    kernel = NumpyKernel(Policy.FUSED, loader=slow_load)
    first = threading.Thread(target=kernel.prepare)
    first.start()
    assert loading.wait(TIMEOUT)
    answers: list[int] = []

    def by_name() -> None:
        answers.append(kernel.count(1, 0, 7, implementation=Implementation.NUMBA_FUSED))

    second = threading.Thread(target=by_name)
    second.start()
    release.set()
    first.join(TIMEOUT)
    second.join(TIMEOUT)
    assert (fake.loads, fake.calls, answers) == (1, [7], [numpy_impl.count(1, 0, 7)])


def test_threads_counting_at_once_share_one_load() -> None:
    fake = FakeFused()
    kernel = auto(fake.load, switch_after_points=1)
    results: dict[int, int] = {}

    def run(stream: int) -> None:
        results[stream] = kernel(4, stream, 300_000, never)

    threads = [threading.Thread(target=run, args=(stream,)) for stream in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert results == {stream: numpy_impl.count(4, stream, 300_000) for stream in range(4)}
    assert kernel.wait_until_loaded(TIMEOUT) is Implementation.NUMBA_FUSED
    assert fake.loads == 1


# ------------------------------------------------------------------ the module's API


def test_kernel_implementations_names_every_kernel() -> None:
    implementations = kernels.kernel_implementations()
    assert list(implementations) == list(KERNELS)
    assert implementations["numpy"] in {"numba-fused", "numpy"}
    assert implementations["python"] == "python"
    assert kernels.prepare_kernels() == kernels.kernel_implementations()


def test_count_from_state_is_the_kernel() -> None:
    """The fake's own implementation, checked, so the hand-over test checks something."""
    state = np.array(np.random.SFC64(np.random.SeedSequence(3, spawn_key=(1,))).state["state"]["state"])
    assert count_from_state(state, 50_000) == numpy_impl.count(3, 1, 50_000)


def test_a_range_goes_to_the_compiled_range_once_it_is_loaded() -> None:
    fake = FakeFused()
    kernel = NumpyKernel(Policy.FUSED, loader=fake.load)
    kernel.prepare()
    assert kernel.count_streams(3, 10, 4, 500) == [numpy_impl.count(3, 10 + i, 500) for i in range(4)]
    assert fake.calls == [2000]  # one call for the whole range
    numpy_only = NumpyKernel(Policy.NUMPY, loader=fake.load)
    assert numpy_only.count_streams(3, 10, 4, 500) == [numpy_impl.count(3, 10 + i, 500) for i in range(4)]
    assert fake.calls == [2000] and fake.loads == 1


def test_a_load_done_in_the_middle_of_a_range_takes_the_rest_of_it() -> None:
    fake = FakeFused()
    slow_load, loading, release = held(fake.load)
    kernel = auto(slow_load, switch_after_points=500)  # the first stream's block starts the load
    looks = 0

    def load_ends_as_the_third_stream_starts() -> bool:
        nonlocal looks
        looks += 1
        if looks == 3:  # one look per stream (one block of 500 points each)
            assert loading.wait(TIMEOUT)
            release.set()
            assert kernel.wait_until_loaded(TIMEOUT) is Implementation.NUMBA_FUSED
        return False

    counts = kernel.count_streams(3, 10, 6, 500, load_ends_as_the_third_stream_starts)
    assert counts == [numpy_impl.count(3, 10 + i, 500) for i in range(6)]
    assert fake.calls == [3 * 500]  # streams 13..15 in one call of the range loop


class FakeCache:
    """numba's cache, cold until told otherwise; counts what is asked of it."""

    def __init__(self, *, warm: bool = False, has_object: bool = False) -> None:
        self.warm_now = warm
        self.object_there = has_object
        self.warmings = 0
        self.marks = 0

    def is_warm(self) -> bool:
        return self.warm_now

    def warm(self) -> None:
        self.warmings += 1

    def mark_warm(self) -> None:
        self.marks += 1

    def has_object(self) -> bool:
        return self.object_there

    def unavailable(self) -> str | None:
        return None


def test_auto_with_a_cold_cache_warms_it_elsewhere_and_loads_once_it_is_warm() -> None:
    fake, cache = FakeFused(), FakeCache()
    kernel = NumpyKernel(Policy.AUTO, loader=fake.load, switch_after_points=1000, cache=cache)
    for stream in range(3):  # 1500 points: the switch was due, the cache cold
        assert kernel.count(1, stream, 500) == numpy_impl.count(1, stream, 500)
    assert (cache.warmings, fake.loads, kernel.implementation()) == (1, 0, Implementation.NUMPY)
    for stream in range(3, 6):  # looked at again after a quarter of the switch: still cold
        kernel.count(1, stream, 500)
    assert (cache.warmings, fake.loads) == (1, 0)  # warmed once, not once a look
    cache.warm_now = True  # the other process is done
    kernel.count(1, 6, 500)
    assert kernel.wait_until_loaded(TIMEOUT) is Implementation.NUMBA_FUSED
    assert (cache.warmings, fake.loads, cache.marks) == (1, 1, 1)


def test_a_load_marks_the_cache_warm_under_every_policy() -> None:
    fake, cache = FakeFused(), FakeCache()
    kernel = NumpyKernel(Policy.FUSED, loader=fake.load, cache=cache)
    kernel.prepare()
    assert (fake.loads, cache.marks, cache.warmings) == (1, 1, 0)  # fused: loads, even from cold


def test_a_load_compiled_in_memory_only_does_not_mark_the_cache_warm() -> None:
    fake, cache = FakeFused(), FakeCache()

    def in_memory() -> LoadedFused:
        loaded = fake.load()
        return LoadedFused(
            loaded.count, loaded.count_from, loaded.count_streams, load_s=0.0, compiled=True, cache_path=None
        )

    kernel = NumpyKernel(Policy.FUSED, loader=in_memory, cache=cache)
    kernel.prepare()
    assert (fake.loads, cache.marks) == (1, 0)


# ------------------------------------------------------------------ the size hint (hello.expected_points)


def hinted(fake: FakeFused, cache: FakeCache | None = None, loader: Loader | None = None) -> NumpyKernel:
    return NumpyKernel(
        Policy.AUTO, loader=loader or fake.load, switch_after_points=10**12, load_at_once_points=1000, cache=cache
    )


def loading_on_a_hint() -> tuple[FakeFused, NumpyKernel, threading.Event]:
    """A kernel told of a long run, its load (of a ``FakeFused``) started by the hint and
    held until the event returned is set."""
    fake = FakeFused()
    slow_load, loading, release = held(fake.load)
    kernel = hinted(fake, loader=slow_load)
    kernel.expect(5000)
    assert loading.wait(TIMEOUT)  # loading already, before any sample
    return fake, kernel, release


BIG = WAIT_MIN_POINTS + 3
"""A sample that waits for a hinted load."""


def until_waiting(kernel: NumpyKernel, thread: threading.Thread) -> None:
    """Until ``thread``'s sample waits for the load (the kernel says so)."""
    deadline = time.monotonic() + TIMEOUT  # a bound against a hang, not a claim of speed
    while not kernel.status().waiting:
        assert thread.is_alive() and time.monotonic() < deadline, "the sample never waited for the load"
        time.sleep(0.001)


def test_a_long_hint_loads_at_once_and_the_first_sample_counts_fused_from_its_first_point() -> None:
    fake, kernel, release = loading_on_a_hint()
    answers: list[int] = []
    first = threading.Thread(target=lambda: answers.append(kernel.count(3, 0, BIG)))
    first.start()
    until_waiting(kernel, first)
    assert kernel.status().numpy_points == 0  # waiting, not counting with NumPy
    release.set()
    first.join(TIMEOUT)
    assert answers == [numpy_impl.count(3, 0, BIG)]
    assert (fake.loads, fake.calls, fake.handed_over, kernel.status().numpy_points) == (1, [BIG], [], 0)


def test_a_range_after_a_long_hint_goes_to_the_lanes_whole() -> None:
    fake = FakeFused()
    kernel = hinted(fake)
    kernel.expect(10**12)
    points = WAIT_MIN_POINTS // 4 + 1
    assert kernel.count_streams(3, 5, 4, points) == [numpy_impl.count(3, 5 + i, points) for i in range(4)]
    assert fake.calls == [4 * points]  # one call of the range loop, no stream counted with NumPy first


def test_only_one_sample_waits_for_a_hinted_load_the_others_count_with_numpy() -> None:
    fake, kernel, release = loading_on_a_hint()
    waiting = threading.Thread(target=kernel.count, args=(3, 0, BIG))
    waiting.start()
    until_waiting(kernel, waiting)
    # A second job's sample does not wait behind the load (a free core is not left idle),
    # and neither does a small one (the worker's reader thread runs those).
    assert kernel.count(3, 1, BIG + 1) == numpy_impl.count(3, 1, BIG + 1)
    assert kernel.count(3, 2, 600) == numpy_impl.count(3, 2, 600)
    assert kernel.status().numpy_points == BIG + 601
    release.set()
    waiting.join(TIMEOUT)
    assert fake.calls == [BIG]


def test_a_small_sample_never_waits_for_a_hinted_load() -> None:
    _, kernel, release = loading_on_a_hint()
    assert kernel.count(3, 2, WAIT_MIN_POINTS - 1) == numpy_impl.count(3, 2, WAIT_MIN_POINTS - 1)
    assert kernel.count_streams(3, 0, 2, 1000) == [numpy_impl.count(3, i, 1000) for i in range(2)]
    release.set()
    assert kernel.wait_until_loaded(TIMEOUT) is Implementation.NUMBA_FUSED


def test_a_sample_waiting_for_a_hinted_load_is_cancelled() -> None:
    _, kernel, release = loading_on_a_hint()
    stop = threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            kernel.count(3, 0, BIG, stop.is_set)
        except Cancelled as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=run)
    waiting.start()
    until_waiting(kernel, waiting)
    stop.set()
    waiting.join(TIMEOUT)
    assert not waiting.is_alive() and len(outcome) == 1  # while the load still runs
    release.set()
    assert kernel.wait_until_loaded(TIMEOUT) is Implementation.NUMBA_FUSED


@pytest.mark.parametrize("points", [0, 1, 999])
def test_a_short_hint_loads_nothing(points: int) -> None:
    fake = FakeFused()
    kernel = hinted(fake)
    kernel.expect(points)
    assert kernel.count(3, 0, 700) == numpy_impl.count(3, 0, 700)
    assert (fake.loads, kernel.implementation()) == (0, Implementation.NUMPY)


def test_a_long_hint_with_a_cold_cache_warms_it_elsewhere_and_counts_with_numpy() -> None:
    fake, cache = FakeFused(), FakeCache()
    kernel = hinted(fake, cache)
    kernel.expect(10**9)
    assert (cache.warmings, fake.loads) == (1, 0)
    assert kernel.count(3, 0, 700) == numpy_impl.count(3, 0, 700)
    kernel.expect(10**9)
    assert (cache.warmings, fake.loads, kernel.implementation()) == (1, 0, Implementation.NUMPY)


@pytest.mark.parametrize(
    ("has_object", "environ", "loads"),
    [(True, {}, 1), (False, {}, 0), (True, {"MCPI_OBJECT_CACHE": "off"}, 0)],
)
def test_where_the_object_cache_is_there_a_shorter_hint_loads_at_once(
    has_object: bool, environ: dict[str, str], loads: int
) -> None:
    """A load from our object cache costs a tenth: a hint of ``object_load_points`` is long
    enough, unless there is no object cache or ``MCPI_OBJECT_CACHE=off`` (numba's load)."""
    fake, cache = FakeFused(), FakeCache(warm=True, has_object=has_object)
    kernel = NumpyKernel(Policy.AUTO, loader=fake.load, switch_after_points=10**12, load_at_once_points=10**9,
                         object_load_points=5000, cache=cache, environ=environ)  # fmt: skip
    kernel.expect(4999)
    assert fake.loads == 0
    kernel.expect(5000)
    kernel.wait_until_loaded(TIMEOUT)
    assert fake.loads == loads


@pytest.mark.parametrize(("has_object", "loads"), [(True, 1), (False, 0)])
def test_where_the_object_cache_is_there_auto_switches_sooner(has_object: bool, loads: int) -> None:
    fake, cache = FakeFused(), FakeCache(warm=True, has_object=has_object)
    kernel = NumpyKernel(Policy.AUTO, loader=fake.load, switch_after_points=10**12, object_load_points=1000,
                         cache=cache, environ={})  # fmt: skip
    for stream in range(3):  # 1500 points counted with NumPy
        assert kernel.count(1, stream, 500) == numpy_impl.count(1, stream, 500)
    kernel.wait_until_loaded(TIMEOUT)
    assert fake.loads == loads


@pytest.mark.parametrize("policy", [Policy.NUMPY, Policy.FUSED])
def test_the_hint_loads_and_warms_nothing_under_numpy_or_fused(policy: Policy) -> None:
    fake, cache = FakeFused(), FakeCache()
    kernel = NumpyKernel(policy, loader=fake.load if policy is Policy.FUSED else never_load, cache=cache,
                         load_at_once_points=1)  # fmt: skip
    kernel.prepare()
    loads = fake.loads
    kernel.expect(10**12)
    assert (fake.loads, cache.warmings) == (loads, 0)


def test_the_wait_for_a_hinted_load_is_told_apart_from_kernel_time() -> None:
    _, kernel, release = loading_on_a_hint()
    waited: list[float] = []

    def run() -> None:
        kernel.count(3, 0, BIG)
        waited.append(kernel.take_waited_s())
        waited.append(kernel.take_waited_s())

    waiting = threading.Thread(target=run)
    waiting.start()
    until_waiting(kernel, waiting)
    release.set()
    waiting.join(TIMEOUT)
    assert waited[0] > 0 and waited[1] == 0  # taken once, by the thread that waited
    assert kernel.take_waited_s() == 0  # another thread waited for nothing


class NumpyImports:
    """Stands in for the import a hint starts: records the thread that ran it each time."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.done = threading.Event()

    def __call__(self) -> None:
        self.threads.append(threading.current_thread().name)
        self.done.set()


def kernel_with(
    policy: Policy, imports: NumpyImports, cache: FakeCache | None = None, fake: FakeFused | None = None
) -> NumpyKernel:
    return NumpyKernel(policy, loader=(fake or FakeFused()).load, switch_after_points=10**12,
                       load_at_once_points=1000, object_load_points=1000, cache=cache or FakeCache(warm=True),
                       environ={}, import_numpy=imports)  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "points", "warm"),
    [(Policy.AUTO, 999, True), (Policy.AUTO, 0, True), (Policy.NUMPY, 10**12, True), (Policy.AUTO, 10**9, False)],
)
def test_a_hint_whose_samples_count_with_numpy_imports_it_at_once_on_a_thread_of_its_own(
    policy: Policy, points: int, warm: bool
) -> None:
    """A worker's first small sample paid NumPy's whole import after its request came (the
    reader thread runs it); a hint that the samples will count with NumPy (short, under
    ``numpy``, or long with a cold cache, which is warmed elsewhere meanwhile) has it
    imported at once, on a thread of its own, once however many hints come."""
    imports, fake = NumpyImports(), FakeFused()
    kernel = kernel_with(policy, imports, FakeCache(warm=warm), fake)
    kernel.expect(points)
    assert imports.done.wait(TIMEOUT)
    kernel.expect(points)  # the hello's, after the environment's
    assert kernel.count(3, 0, 700) == numpy_impl.count(3, 0, 700)
    assert imports.threads == ["mcpi-numpy-import"]
    assert fake.loads == 0


@pytest.mark.parametrize("policy", [Policy.AUTO, Policy.FUSED])
def test_a_hint_whose_samples_count_fused_imports_no_numpy(policy: Policy) -> None:
    imports, fake = NumpyImports(), FakeFused()
    kernel = kernel_with(policy, imports, fake=fake)
    kernel.prepare()
    kernel.expect(10**12)
    assert kernel.wait_until_loaded(TIMEOUT) is Implementation.NUMBA_FUSED
    assert imports.threads == [] and fake.loads == 1


def test_a_second_long_hint_leaves_the_first_samples_wait_for_the_load() -> None:
    """A worker told the run's size in its environment and again in its hello: the second
    hint finds the load underway, and the first big sample still waits for it rather than
    count with NumPy beside it."""
    fake, kernel, release = loading_on_a_hint()
    kernel.expect(5000)  # the hello's
    first = threading.Thread(target=kernel.count, args=(3, 0, BIG))
    first.start()
    until_waiting(kernel, first)
    assert kernel.status().numpy_points == 0
    release.set()
    first.join(TIMEOUT)
    assert (fake.loads, fake.calls) == (1, [BIG])


def test_the_welcome_says_fused_while_a_hinted_load_runs_that_the_next_big_sample_waits_for() -> None:
    """``implementation_ahead`` (what the welcome says): "numba-fused" as soon as a hint has
    started the load, which the next big sample waits for, while ``implementation`` (what
    each result says) stays "numpy" until it is loaded. Without a hint, or when the load
    fails, both say "numpy"."""
    _, kernel, release = loading_on_a_hint()
    assert (kernel.implementation_ahead(), kernel.implementation()) == (
        Implementation.NUMBA_FUSED,
        Implementation.NUMPY,
    )
    release.set()
    assert kernel.wait_until_loaded(TIMEOUT) is Implementation.NUMBA_FUSED
    assert kernel.implementation_ahead() is Implementation.NUMBA_FUSED
    unhinted = hinted(FakeFused())
    assert unhinted.implementation_ahead() is Implementation.NUMPY
    failed = hinted(FakeFused(), loader=failing(NumbaNotInstalled("numba is not installed")))
    failed.expect(5000)
    assert failed.wait_until_loaded(TIMEOUT) is Implementation.NUMPY
    assert failed.implementation_ahead() is Implementation.NUMPY
