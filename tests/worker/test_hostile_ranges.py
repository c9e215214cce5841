"""Ranges a peer can frame that must not stall a worker (protocol.md §6, §6.1, §7, §9).

A range costs its streams' set-up as well as its points: 65,536 one-point streams were
computed on the worker's reader thread (a ``ping`` waited a second, ``cancel`` and
``shutdown`` went unseen), zero-point streams never looked at their stop flag (each
seeded a generator then; a stream of no points needs none now, but a kernel's short
streams may still not look at it), and a range of 2**64-1 zero-point streams in one group
was never answered, nor were ``shutdown`` and end of input. What must hold instead,
checked four ways:

- the sans-IO ends: a range of more than ``MAX_STREAMS`` streams is refused by the
  worker's end and never sent by the coordinator's;
- ``count_groups``: a range whose kernel never looks at its stop flag sees it between
  slices; a range of zero-point streams is counted without its kernel;
- the worker loop (``server.Worker`` over OS pipes) with a kernel the test holds in the
  range's first stream, so that what the reader does meanwhile is decided by the test,
  not by a clock: a ``ping`` is answered, and ``cancel``, ``shutdown`` or end of input
  stop the range at its next slice;
- the real ``mcpi-worker`` and the worker written from protocol.md alone
  (``spec_worker.py``), with the process table checked at the end.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import psutil
import pytest
import trio
from worker_process import SPEC_WORKER, worker_command

from mcpi_coordinator.testing.client import WorkerClient, open_worker
from mcpi_worker.kernels import Cancelled, NumpyKernel, Policy, StopCheck
from mcpi_worker.protocol import (
    MAX_STREAMS,
    UINT64_MAX,
    WORKER_MESSAGES,
    Cancel,
    CoordinatorEnd,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    LocalProtocolError,
    Ping,
    Pong,
    Result,
    Sample,
    Shutdown,
    StartSample,
    Welcome,
    WorkerEnd,
    WorkerMessage,
    WorkerOffer,
    encode,
)
from mcpi_worker.sampling import SLICE_WORK, count_groups
from mcpi_worker.server import Worker

TIMEOUT = 60.0  # seconds; reached only by a worker that stopped listening
OFFER = WorkerOffer(worker="test", pid=1, host="h", kernels=("numpy",), max_inflight=8)
LARGEST = MAX_STREAMS


# ------------------------------------------------------------------ the sans-IO ends


def test_the_worker_end_refuses_a_range_above_max_streams_and_takes_the_largest() -> None:
    end = WorkerEnd(OFFER)
    end.receive_data(encode(Hello(versions=(2,), client="t")))
    end.data_to_send()
    events = end.receive_data(
        encode(Sample(1, 0, 0, 0, "numpy", streams=UINT64_MAX))
        + encode(Sample(2, 0, 0, 0, "numpy", streams=MAX_STREAMS + 1, group=MAX_STREAMS))
        + encode(Sample(3, 0, 0, 0, "numpy", streams=MAX_STREAMS))
    )
    decoder = FrameDecoder(WORKER_MESSAGES)
    decoder.feed(end.data_to_send())
    refused = [decoder.next_message(), decoder.next_message()]
    assert all(isinstance(e, Error) and e.code == ErrorCode.INVALID_REQUEST for e in refused)
    assert [e.id for e in refused if isinstance(e, Error)] == [1, 2]
    assert all(f"limit of {MAX_STREAMS}" in e.message for e in refused if isinstance(e, Error))
    assert events == [StartSample(Sample(3, 0, 0, 0, "numpy", streams=MAX_STREAMS))]


def test_the_coordinator_end_never_sends_a_range_a_worker_must_refuse() -> None:
    end = CoordinatorEnd(client="t", task_budget=lambda _work: 60.0)
    end.data_to_send()
    end.receive_data(encode(Welcome(2, "w", 1, "h", ("numpy",), 8, 1 << 20, 1 << 40)), 0.0)
    with pytest.raises(LocalProtocolError, match=f"limit of {MAX_STREAMS}"):
        end.send_sample(1, 0, 0, "numpy", streams=MAX_STREAMS + 1, group=MAX_STREAMS, now=0.0)
    assert end.send_sample(1, 0, 0, "numpy", streams=MAX_STREAMS, group=MAX_STREAMS, now=0.0) == 1


def test_a_range_s_stall_budget_counts_its_streams_set_up() -> None:
    """§9: a range of many tiny streams is mostly set-up; its budget must say so, or a
    coordinator following §9 kills a healthy worker."""
    budgets: list[int] = []
    end = CoordinatorEnd(client="t", task_budget=lambda work: budgets.append(work) or 60.0)
    end.data_to_send()
    end.receive_data(encode(Welcome(2, "w", 1, "h", ("numpy",), 8, 1 << 20, 1 << 40)), 0.0)
    end.send_sample(1, 0, 0, "numpy", streams=4096, group=1, now=0.0)
    end.send_sample(1, 0, 10, "numpy", now=0.0)
    assert budgets == [Sample(1, 1, 0, 0, "numpy", streams=4096).work, Sample(2, 1, 0, 10, "numpy").work]
    assert budgets[0] > 4096 * 10_000 and budgets[1] > 10


# ------------------------------------------------------------------ count_groups


def test_a_range_whose_kernel_never_looks_at_its_stop_flag_sees_it_between_slices() -> None:
    """A kernel may count a short stream without looking at its stop flag (NumPy did so
    for a stream of no points); the range must still look between slices (the issue:
    300,000 such streams ignored ``cancel``)."""
    checks = 0
    calls = 0

    def stop_after_the_first_check() -> bool:
        nonlocal checks
        checks += 1
        return checks > 1

    def deaf_kernel(seed: int, stream: int, points: int, should_stop: StopCheck) -> int:
        nonlocal calls
        calls += 1
        return 0

    request = Sample(1, 7, 0, 1, "numpy", streams=300_000, group=300_000)
    with pytest.raises(Cancelled):
        count_groups(deaf_kernel, request, stop_after_the_first_check)
    assert checks <= 3 and calls <= SLICE_WORK // 16_385


def test_a_range_of_zero_point_streams_is_counted_without_its_kernel() -> None:
    """No point of a stream of no points can be inside, so no stream of such a range
    needs its generator (§11): every group counts 0, at once, with the kernel (which
    would seed a generator per stream) never called and the stop flag never asked."""

    def no_kernel(seed: int, stream: int, points: int, should_stop: StopCheck) -> int:
        raise AssertionError("a zero-point stream needs no kernel")

    def no_stop() -> bool:
        raise AssertionError("nothing to stop")

    request = Sample(1, 7, 0, 0, "numpy", streams=4096, group=3)
    assert count_groups(no_kernel, request, no_stop) == [0] * request.groups
    assert count_groups(NumpyKernel(Policy.NUMPY), request) == [0] * 1366


def test_count_groups_keeps_every_group_s_count_across_slices() -> None:
    """Slicing a range for stop checks changes no count (groups straddle the slices)."""
    per_slice = SLICE_WORK // (5 + 16384)
    streams = 3 * per_slice + 7
    group = per_slice // 2 + 3
    kernel = NumpyKernel(Policy.NUMPY)
    request = Sample(1, 11, 1000, 5, "numpy", streams=streams, group=group)
    singles = [kernel(11, 1000 + i, 5) for i in range(streams)]
    expected = [sum(singles[i : i + group]) for i in range(0, streams, group)]
    assert count_groups(kernel, request) == expected


# ------------------------------------------------------------------ the worker loop, held


class HeldKernel:
    """A kernel held in its first call until its stop flag is set (it polls it, as a real
    kernel does between blocks) or the test gives up (``release``); every other call is
    instant. So the range can end only by being stopped."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, seed: int, stream: int, points: int, should_stop: StopCheck) -> int:
        self.calls += 1
        if self.calls == 1:
            self.held.set()
            while not should_stop():
                if self.release.wait(0.001):
                    break
            raise Cancelled
        return 0


class _Pipes:
    def __init__(self, stdin: trio.lowlevel.FdStream, stdout: trio.lowlevel.FdStream) -> None:
        self.stdin = stdin
        self.stdout = stdout


RANGES = {
    "65536_one_point_streams": (65_536, 1),
    "largest_range_of_one_point_streams": (LARGEST, 1),
}


@pytest.mark.usefixtures("quiet_structlog")
@pytest.mark.parametrize("size", sorted(RANGES))
@pytest.mark.parametrize("end", ["cancel", "shutdown", "eof"])
async def test_a_worker_holding_a_range_answers_ping_and_obeys_cancel_shutdown_and_eof(
    size: str, end: str
) -> None:
    streams, points = RANGES[size]
    kernel = HeldKernel()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    worker = Worker(in_r, out_w, kernels={"numpy": kernel}, spin_s=0)
    outcome: list[Any] = []
    serving = threading.Thread(target=lambda: outcome.append(worker.serve()), daemon=True)
    serving.start()
    stdin, stdout = trio.lowlevel.FdStream(in_w), trio.lowlevel.FdStream(out_r)  # they own the fds
    client = WorkerClient(_Pipes(stdin, stdout))
    try:
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            await client.send(Sample(1, 5, 0, points, "numpy", streams=streams, group=streams))
            await trio.to_thread.run_sync(kernel.held.wait)
            # The range is in its first stream, held: the reader must still be reading.
            await client.send(Ping(2))
            assert await client.receive() == Pong(2)
            if end == "cancel":
                await client.send(Cancel(1), Ping(3))
                assert await client.receive() == Pong(3)  # the cancel before it was read
            elif end == "shutdown":
                await client.send(Shutdown())
            else:
                await client.close_stdin()
            answer = await client.receive()
            assert isinstance(answer, Error) and answer.code == ErrorCode.CANCELLED, answer
            assert kernel.calls == 1
            if end != "cancel":  # the loop ends (its output fd is the test's to close)
                await trio.to_thread.run_sync(serving.join)
                assert int(outcome[0].exit_code) == 0
    finally:
        kernel.release.set()
        await stdin.aclose()  # end of input: the worker ends, if it has not yet
        await trio.to_thread.run_sync(serving.join, TIMEOUT)
        await stdout.aclose()
        for fd in (in_r, out_w):
            os.close(fd)


# ------------------------------------------------------------------ real processes


PEERS: dict[str, list[str]] = {
    "mcpi-worker": worker_command(),
    "spec-worker": [sys.executable, SPEC_WORKER],
}


async def _gone(process: trio.Process) -> None:
    """Reaped, and no longer in the process table."""
    await process.wait()
    assert not psutil.pid_exists(process.pid) or psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("peer", sorted(PEERS))
async def test_a_range_of_2_64_zero_point_streams_is_refused_and_the_worker_serves_on(peer: str) -> None:
    """The issue's range: 2**64-1 zero-point streams in one group. ``max_points`` lets it
    through (0 points in all); ``MAX_STREAMS`` refuses it at once."""
    async with open_worker(PEERS[peer]) as (process, client, stderr):
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            await client.send(Sample(1, 0, 0, 0, "numpy", streams=UINT64_MAX), Ping(2))
            refusal, pong = await client.receive(), await client.receive()
            assert isinstance(refusal, Error) and refusal.id == 1, (refusal, stderr.text)
            assert refusal.code == ErrorCode.INVALID_REQUEST
            assert pong == Pong(2)
            await client.send(Shutdown())
            assert await client.receive_until_eof() == []
            assert await process.wait() == 0
            await _gone(process)


@pytest.mark.parametrize("peer", sorted(PEERS))
async def test_a_worker_computing_the_largest_range_answers_ping_and_obeys_shutdown(peer: str) -> None:
    """The largest range a worker must take: ``MAX_STREAMS`` one-point streams of the
    ``python`` kernel (seconds of stream set-up; zero-point streams need none). The
    ``pong`` comes before the range's answer, and ``shutdown`` ends it: answered
    (``cancelled``, or its result had it just finished), then exit 0 and no process left."""
    async with open_worker(PEERS[peer]) as (process, client, stderr):
        with trio.fail_after(TIMEOUT):
            await client.handshake()
            await client.send(Sample(1, 3, 0, 1, "python", streams=LARGEST, group=LARGEST))
            await client.send(Ping(2))
            first = await client.receive()
            assert first == Pong(2), (first, stderr.text)
            await client.send(Shutdown())
            messages: list[WorkerMessage] = await client.receive_until_eof()
            assert len(messages) == 1 and messages[0].id == 1
            answer = messages[0]
            assert (isinstance(answer, Error) and answer.code == ErrorCode.CANCELLED) or (
                isinstance(answer, Result) and answer.insides is not None and len(answer.insides) == 1
            )
            assert await process.wait() == 0
            await _gone(process)
