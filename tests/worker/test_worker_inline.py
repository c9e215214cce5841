"""Small samples are served on the worker's reader thread, input first (``server.Worker``).

A sample small enough to run inline (``INLINE_MAX_WORK``) is computed by the thread that
read it: handing it to a compute thread cost more than a 0-point kernel. Input is read
before each one, so what arrives while one runs (more samples, a ``ping``, a ``cancel``,
end of input) is read and acted on before the next starts, instead of the next being
handed to another thread. Checked three ways:

- the worker loop (``server.Worker`` over OS pipes) with a kernel the test holds in its
  first call, so what arrives meanwhile is decided by the test, not by a clock: which
  thread runs each later sample, the order of the answers, a ``cancel`` seen before the
  sample it names starts;
- the real ``mcpi-worker`` fed hostile input on this path (a fatal frame behind a run of
  samples, a flood of pings beside one), with the process table checked at the end;
- a stand-in parent streaming small samples to a real ``mcpi-worker`` and then SIGKILLed:
  the worker must not outlive it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from worker_pipes import serving_over_pipes

from mcpi_coordinator.testing.client import WorkerClient, open_worker
from mcpi_coordinator.testing.processes import still_running, wait_until_gone
from mcpi_worker.kernels import KERNELS, Cancelled, StopCheck
from mcpi_worker.kernels.base import never
from mcpi_worker.protocol import (
    HEADER,
    MAX_GROUPS,
    MAX_STREAMS,
    Cancel,
    Error,
    ErrorCode,
    Ping,
    Pong,
    Result,
    Sample,
    encode,
)
from mcpi_worker.sampling import count_groups
from mcpi_worker.server import INLINE_MAX_WORK, Worker

TIMEOUT = 60.0  # seconds; a bound against a hang, reached only by a worker that stopped listening
BUSY_CPU_S = 1.0
"""CPU seconds a worker must have used before it counts as serving the stream (its own
start-up is well under that)."""


class FirstCallHeld:
    """A kernel whose first call waits for ``release``; every call notes the thread it
    ran on and whether its stop flag was already set, and a stopped call raises
    ``Cancelled`` as a real kernel does at its first check."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self.release = threading.Event()
        self.calls: list[tuple[str, bool]] = []

    def __call__(self, seed: int, stream: int, points: int, should_stop: StopCheck) -> int:
        first = not self.calls
        self.calls.append((threading.current_thread().name, should_stop()))
        if first:
            self.held.set()
            if not self.release.wait(TIMEOUT):
                raise AssertionError("the test never released the kernel")
        if should_stop():
            raise Cancelled
        return points // 2


async def _serve_held(kernel: FirstCallHeld, steps: Any) -> None:
    """Run a ``Worker`` over OS pipes with ``kernel`` as ``numpy`` and drive it with
    ``steps(client)``; end it with EOF and join its thread."""
    async with serving_over_pipes(lambda i, o: Worker(i, o, kernels={"numpy": kernel}, spin_s=0)) as client:
        try:
            with trio.fail_after(TIMEOUT):
                await client.handshake()
                await steps(client)
        finally:
            kernel.release.set()


def _small(request_id: int, points: int = 10) -> Sample:
    return Sample(request_id, 3, request_id, points, "numpy")


@pytest.mark.usefixtures("quiet_structlog")
async def test_samples_arriving_while_a_small_one_runs_are_read_then_run_on_the_reader() -> None:
    kernel = FirstCallHeld()

    async def steps(client: WorkerClient) -> None:
        await client.send(_small(1), _small(2))
        await trio.to_thread.run_sync(kernel.held.wait)
        # Sample 1 runs on the reader, held; these wait in the pipe until it ends.
        await client.send(_small(3), _small(4), Ping(5))
        kernel.release.set()
        answers = [await client.receive() for _ in range(5)]
        # The input waiting was read before sample 2 started: the pong comes right after
        # sample 1's result, and every sample ran on the reader (none handed over).
        assert [type(a).__name__ for a in answers] == ["Result", "Pong", "Result", "Result", "Result"], answers
        assert [a.id for a in answers if isinstance(a, Result | Pong)] == [1, 5, 2, 3, 4]
        assert all((a.inside, a.points) == (5, 10) for a in answers if isinstance(a, Result))
        assert [name for name, _ in kernel.calls] == ["mcpi-reader"] * 4, kernel.calls

    await _serve_held(kernel, steps)


@pytest.mark.usefixtures("quiet_structlog")
async def test_a_cancel_read_behind_a_small_sample_stops_the_next_before_it_counts() -> None:
    kernel = FirstCallHeld()

    async def steps(client: WorkerClient) -> None:
        await client.send(_small(1), _small(2))
        await trio.to_thread.run_sync(kernel.held.wait)
        await client.send(Cancel(2), Ping(3))
        kernel.release.set()
        first, pong, cancelled = [await client.receive() for _ in range(3)]
        assert isinstance(first, Result) and first.id == 1, first
        assert pong == Pong(3)
        assert isinstance(cancelled, Error) and cancelled.id == 2, cancelled
        assert cancelled.code == ErrorCode.CANCELLED
        # Sample 2 started on the reader with its stop flag already set by the cancel.
        assert kernel.calls == [("mcpi-reader", False), ("mcpi-reader", True)], kernel.calls
        await client.send(_small(4))  # and the worker goes on serving
        last = await client.receive()
        assert isinstance(last, Result) and (last.id, last.inside, last.points) == (4, 5, 10), last

    await _serve_held(kernel, steps)


# ------------------------------------------------------------------ the real mcpi-worker


def _bin(name: str) -> str:
    script = Path(sys.executable).with_name(name)
    return str(script) if script.exists() else name


def _gone(pid: int) -> None:
    left, took = wait_until_gone([pid], TIMEOUT)
    assert left == [], f"worker {pid} still running {took:.1f} s after it should have ended"


async def test_a_fatal_frame_read_between_small_samples_ends_the_worker_with_exit_3() -> None:
    samples = b"".join(encode(Sample(i, 1, i, 65536, "numpy")) for i in range(1, 61))
    async with open_worker([_bin("mcpi-worker")]) as (process, client, _stderr):
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            await client.send_bytes(samples)
            first = await client.receive()
            # The reader is going through the run of samples: a zero-length frame now is
            # read between two of them.
            await client.send_bytes(HEADER.pack(0))
            answers = [first, *await client.receive_until_eof()]
            assert await process.wait() == 3
    *results, fatal = answers
    assert isinstance(fatal, Error) and fatal.id is None and fatal.code == ErrorCode.MALFORMED_FRAME, fatal
    # What was answered before the end was answered right, in order, once each.
    assert all(isinstance(r, Result) and r.points == 65536 for r in results), results[:3]
    assert [r.id for r in results if isinstance(r, Result)] == list(range(1, len(results) + 1))
    _gone(process.pid)


@pytest.mark.slow
async def test_a_flood_of_pings_beside_small_samples_starves_none_of_them() -> None:
    floods, per_flood = 40, 500
    async with open_worker([_bin("mcpi-worker")]) as (process, client, _stderr):
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            next_id = 1
            pongs = 0
            for _ in range(floods):
                # A small sample, then more pings than one read takes: the sample must
                # still be answered (the reader computes it after one read).
                frames = [encode(Sample(next_id, 1, next_id, 1000, "numpy"))]
                frames += [encode(Ping(next_id + 1 + i)) for i in range(per_flood)]
                next_id += 1 + per_flood
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.send_bytes, b"".join(frames))
                    got_result = False
                    for _ in range(1 + per_flood):
                        answer = await client.receive()
                        if isinstance(answer, Result):
                            got_result = True
                        else:
                            assert isinstance(answer, Pong), answer
                            pongs += 1
                    assert got_result
            assert pongs == floods * per_flood
            await client.close_stdin()
            assert await client.receive_until_eof() == []
            assert await process.wait() == 0
    _gone(process.pid)


# A stand-in coordinator: one real worker, fed small samples (computed on its reader)
# as fast as it answers them, until the test SIGKILLs this process.
STREAMING_PARENT = textwrap.dedent(
    """
    import os, subprocess, sys
    from mcpi_worker.protocol import FrameDecoder, Hello, Sample, WORKER_MESSAGES, NEED_DATA, encode
    worker = subprocess.Popen([{worker!r}], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    os.write(worker.stdin.fileno(), encode(Hello(versions=(2,), client="inline-orphan-test")))
    print(worker.pid, flush=True)
    decoder = FrameDecoder(WORKER_MESSAGES)
    def answer():
        while (message := decoder.next_message()) is NEED_DATA:
            decoder.feed(os.read(worker.stdout.fileno(), 65536))
        return message
    answer()
    request = 1
    while True:
        batch = b"".join(encode(Sample(request + i, 1, i, 65536, "numpy")) for i in range(32))
        os.write(worker.stdin.fileno(), batch)
        for _ in range(32):
            answer()
        request += 32
    """
)


@pytest.mark.slow
def test_a_worker_streaming_small_samples_does_not_outlive_its_sigkilled_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", STREAMING_PARENT.format(worker=_bin("mcpi-worker"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    try:
        worker = psutil.Process(pid)
        start = time.monotonic()
        while worker.cpu_times().user < BUSY_CPU_S:
            assert time.monotonic() - start < TIMEOUT, "the worker never got busy"
            assert parent.poll() is None, "the stand-in parent died early"
            time.sleep(0.05)
        parent.kill()
        parent.wait()
        _gone(pid)
    finally:
        for leftover in still_running([parent.pid, pid]):
            os.kill(leftover, signal.SIGKILL)


# ------------------------------------------------------------------ a sample of no points


def test_a_plain_sample_of_no_points_counts_0_without_its_kernel() -> None:
    def no_kernel(seed: int, stream: int, points: int, should_stop: StopCheck) -> int:
        raise AssertionError("a sample of no points needs no generator")

    assert count_groups(no_kernel, Sample(1, 2**64 - 1, 7, 0, "numpy")) == [0]
    # The same count the kernels give for no points, whatever the seed and stream.
    for seed, stream in ((0, 0), (1, 7), (2**64 - 1, 2**64 - 1)):
        assert [KERNELS[name](seed, stream, 0, never) for name in KERNELS] == [0] * len(KERNELS)


@pytest.mark.usefixtures("quiet_structlog")
async def test_a_range_of_no_points_runs_on_the_reader_whatever_its_streams() -> None:
    """A range of zero-point streams runs no kernel, so the reader computes it whatever
    its streams (its work, counted as their set-up, is far above ``INLINE_MAX_WORK``):
    no hand-off to a compute thread per range. One with points of that work still goes
    to a compute thread."""
    ran_on: dict[int, str] = {}

    def note(request: Sample) -> None:
        ran_on[request.id] = threading.current_thread().name

    def make(input_fd: int, output_fd: int) -> Worker:
        return Worker(input_fd, output_fd, kernels={"numpy": KERNELS["numpy"]}, on_sample=note, spin_s=0)

    async with serving_over_pipes(make) as client:
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            zero = Sample(1, 3, 0, 0, "numpy", streams=MAX_STREAMS, group=MAX_STREAMS // MAX_GROUPS)
            some = Sample(2, 3, 0, 1, "numpy", streams=8, group=1)
            assert zero.work > INLINE_MAX_WORK and some.work > INLINE_MAX_WORK
            await client.send(zero, some)
            answers = {a.id: a for a in [await client.receive(), await client.receive()]}
    assert isinstance(answers[1], Result) and answers[1].insides == (0,) * MAX_GROUPS
    one_point_counts = tuple(KERNELS["numpy"](3, stream, 1, never) for stream in range(8))
    assert isinstance(answers[2], Result) and answers[2].insides == one_point_counts
    assert ran_on[1] == "mcpi-reader" and ran_on[2] != "mcpi-reader", ran_on


class CountedLock:
    """The worker's lock (its ``lock`` seam), counting how often it is taken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.holds = 0

    def __enter__(self) -> bool:
        taken = self._lock.acquire()
        self.holds += 1
        return taken

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


@pytest.mark.usefixtures("quiet_structlog")
@pytest.mark.parametrize("streams", [1, 64])
async def test_a_sample_of_no_points_is_answered_in_the_hold_that_read_it(streams: int) -> None:
    """Hot path, counted: one sample of no points (plain, or a range) at a time, each one
    read alone, costs the reader two holds of the lock, the look at its state before it
    reads and the hold in which the read is acted on, where the sample is answered; no
    job is made of it and no second pass over it (``_run_inline``) takes the lock again
    (five holds a sample before). Fails if a hold, or a hand-off, per sample creeps back."""
    lock = CountedLock()
    requests = 20

    def make(input_fd: int, output_fd: int) -> Worker:
        return Worker(input_fd, output_fd, kernels={"numpy": KERNELS["numpy"]}, spin_s=0, lock=lock)

    async with serving_over_pipes(make) as client:
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            group = 1 if streams > 1 else None
            await client.send(Sample(1, 3, 0, 0, "numpy", streams=streams, group=group))
            assert isinstance(await client.receive(), Result)
            before = lock.holds
            for request_id in range(2, requests + 2):
                await client.send(Sample(request_id, 3, request_id, 0, "numpy", streams=streams, group=group))
                answer = await client.receive()
                assert isinstance(answer, Result) and answer.id == request_id and answer.inside == 0
                assert answer.insides == (None if streams == 1 else (0,) * streams)
            holds = lock.holds - before
    # The reader's look at its state after an answer may come before or after the
    # test's reading of the count, at the first answer and at the last: one hold either way.
    assert 2 * requests - 1 <= holds <= 2 * requests + 1, holds


async def test_the_welcome_says_the_implementations_of_when_the_hello_came() -> None:
    """The welcome's ``implementations`` are read when the ``hello`` comes, not when the
    worker was made: a worker started before its coordinator is ready (``launch/early.py``)
    loads its kernels meanwhile. ``welcome_implementations`` is read for the welcome and
    ``implementations`` for each result: the welcome may say what will count the next big
    sample while the results say what counted theirs."""
    ahead = {"numpy": "numpy"}

    def make(input_fd: int, output_fd: int) -> Worker:
        return Worker(
            input_fd, output_fd, kernels={"numpy": lambda seed, stream, points, should_stop: points // 2},
            implementations=lambda: {"numpy": "what counted it"}, welcome_implementations=lambda: ahead,
            spin_s=0,
        )  # fmt: skip

    async with serving_over_pipes(make) as client:
        with trio.fail_after(TIMEOUT):
            ahead["numpy"] = "numba-fused"  # loaded (or loading) after the worker was made
            welcome = await client.handshake()
            assert welcome.implementations == ("numba-fused",)
            await client.send(_small(1))
            answer = await client.receive()
    assert isinstance(answer, Result) and answer.implementation == "what counted it", answer
