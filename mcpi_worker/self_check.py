"""``mcpi-worker --self-check``: drive a real ``Worker`` over OS pipes, in-process.

It exercises the same code a coordinator talks to (framing, handshake, both
kernels, ping, cancel, shutdown) and prints what happened, so someone embedding
the worker can see in seconds (more the first time: numba compiles the fused
loop, then caches it) that their installation works, and what a
conversation looks like. It also says which implementation runs the numpy kernel
(loading the fused one, unless ``MCPI_NUMPY_IMPL=numpy``, to compare it with NumPy's).
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Final

from mcpi_worker import __version__
from mcpi_worker.kernels import (
    KERNELS,
    NUMPY_KERNEL,
    FusedUnavailable,
    Implementation,
    KernelConfigError,
    Policy,
)
from mcpi_worker.kernels.choice import LoadedFrom
from mcpi_worker.protocol import (
    MAX_POINTS,
    NEED_DATA,
    PROTOCOL_VERSIONS,
    WORKER_MESSAGES,
    Cancel,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    Result,
    Sample,
    Shutdown,
    Welcome,
    encode,
)
from mcpi_worker.protocol import Message as _Message
from mcpi_worker.server import DEFAULT_MAX_INFLIGHT, ConnectionEnded, ExitCode, Worker

SELF_CHECK_POINTS: Final[dict[str, int]] = {"numpy": 4_000_000, "python": 200_000}
COMPARISON_POINTS: Final[int] = 20_000_000
SEED: Final[int] = 20240601


class SelfCheckFailed(Exception):
    pass


class _PipeClient:
    """The coordinator's side of the conversation, blocking, for this check only."""

    def __init__(self, send_fd: int, receive_fd: int) -> None:
        self._send_fd = send_fd
        self._receive_fd = receive_fd
        self._decoder = FrameDecoder(WORKER_MESSAGES)

    def send(self, message: _Message) -> None:
        os.write(self._send_fd, encode(message))  # small frames: one write suffices

    def receive(self) -> _Message:
        while True:
            message = self._decoder.next_message()
            if message is not NEED_DATA:
                return message
            data = os.read(self._receive_fd, 65536)
            if not data:
                raise SelfCheckFailed("the worker closed its output early")
            self._decoder.feed(data)

    def close(self) -> None:
        os.close(self._send_fd)


def run_self_check(max_inflight: int = DEFAULT_MAX_INFLIGHT) -> int:
    request_read, request_write = os.pipe()
    response_read, response_write = os.pipe()
    worker = Worker(request_read, response_write, max_inflight=max_inflight)
    outcome: list[ConnectionEnded] = []
    thread = threading.Thread(target=lambda: outcome.append(worker.serve()), daemon=True)
    thread.start()
    client = _PipeClient(request_write, response_read)
    print(f"mcpi-worker {__version__} self-check")
    try:
        _compare_implementations()
        _converse(client)
        client.send(Shutdown())
        thread.join(timeout=10)
        if not outcome or outcome[0].exit_code != ExitCode.OK:
            raise SelfCheckFailed(f"the worker did not end cleanly: {outcome}")
        print(f"  shutdown     orderly ({outcome[0].reason})")
    except SelfCheckFailed as exc:
        print(f"FAILED: {exc}")
        return ExitCode.INTERNAL
    finally:
        for fd in (request_write, response_read):
            try:
                os.close(fd)
            except OSError:
                pass
    print("OK")
    return ExitCode.OK


def _expect(message: _Message, kind: type, request_id: int | None = None) -> _Message:
    if not isinstance(message, kind) or getattr(message, "id", request_id) != request_id:
        raise SelfCheckFailed(f"expected {kind.__name__} for id {request_id}, got {message}")
    return message


def _converse(client: _PipeClient) -> None:
    client.send(Hello(versions=PROTOCOL_VERSIONS, client="mcpi-worker --self-check"))
    welcome = client.receive()
    if not isinstance(welcome, Welcome):
        raise SelfCheckFailed(f"expected welcome, got {welcome}")
    print(
        f"  handshake    protocol v{welcome.version}, {welcome.worker}, kernels "
        f"{', '.join(welcome.kernels)}, max_inflight {welcome.max_inflight}"
    )

    next_id = 1
    for kernel, points in SELF_CHECK_POINTS.items():
        client.send(Sample(id=next_id, seed=SEED, stream=0, points=points, kernel=kernel))
        result = _expect(client.receive(), Result, next_id)
        assert isinstance(result, Result)
        if kernel == "numpy":  # whichever implementation served it, NumPy's must agree
            direct = NUMPY_KERNEL.count(SEED, 0, points, implementation=Implementation.NUMPY)
        else:
            direct = KERNELS[kernel](SEED, 0, points, lambda: False)
        if result.inside != direct:
            raise SelfCheckFailed(f"{kernel}: protocol gave {result.inside}, kernel {direct}")
        estimate = 4 * result.inside / points
        rate = points / result.elapsed_s / 1e6 if result.elapsed_s > 0 else math.inf
        print(
            f"  {kernel:<12} {points:,} points, {result.inside:,} inside: "
            f"pi ~ {estimate:.5f} ({rate:,.0f} M points/s)"
        )
        next_id += 1

    started = time.perf_counter()
    client.send(Ping(id=next_id))
    _expect(client.receive(), Pong, next_id)
    print(f"  ping         answered in {(time.perf_counter() - started) * 1e3:.2f} ms")
    next_id += 1

    client.send(Sample(id=next_id, seed=SEED, stream=1, points=MAX_POINTS, kernel="numpy"))
    client.send(Ping(id=next_id + 1))
    _expect(client.receive(), Pong, next_id + 1)  # answered while the kernel runs
    started = time.perf_counter()
    client.send(Cancel(id=next_id))
    answer = _expect(client.receive(), Error, next_id)
    assert isinstance(answer, Error)
    if answer.code != ErrorCode.CANCELLED:
        raise SelfCheckFailed(f"expected a cancelled error, got {answer}")
    print(
        f"  cancel       a {MAX_POINTS:,}-point request, pinged while running, "
        f"stopped {(time.perf_counter() - started) * 1e3:.1f} ms after cancel"
    )


def _rate(points: int, seconds: float) -> str:
    return f"{points / seconds / 1e6:,.0f} M points/s" if seconds > 0 else "inf"


def _compare_implementations() -> None:
    """Say which implementation runs the numpy kernel, and time both side by side."""
    try:
        policy = NUMPY_KERNEL.policy
    except KernelConfigError as exc:
        raise SelfCheckFailed(str(exc)) from None
    if policy is Policy.NUMPY:
        print("  numpy impl   numpy (MCPI_NUMPY_IMPL=numpy: numba-fused not loaded)")
        return
    # Loading the fused loop compiles it the first time (seconds), then reads numba's
    # cache: say so before the wait, so that a silent pause is not taken for a hang.
    print("  loading      numba-fused (compiled the first time, several seconds; cached after)", flush=True)
    try:
        NUMPY_KERNEL.count(SEED, 0, 1, implementation=Implementation.NUMBA_FUSED)
    except FusedUnavailable as exc:
        print(f"  numpy impl   numpy (numba-fused unavailable: {exc})")
        return
    status = NUMPY_KERNEL.status()
    assert status.fused is not None
    if status.fused.loaded_from is LoadedFrom.OBJECT_CACHE:
        how = "loaded from the object cache, without numba,"
    else:
        how = "compiled" if status.fused.compiled else "loaded from numba's cache"
    where = status.fused.cache_path or "in memory only: no writable cache directory"
    print(f"  numba-fused  {how} in {status.fused.load_s:.2f} s ({where})")
    counts, rates = {}, {}
    for implementation in (Implementation.NUMBA_FUSED, Implementation.NUMPY):
        started = time.perf_counter()
        counts[implementation] = NUMPY_KERNEL.count(SEED, 2, COMPARISON_POINTS, implementation=implementation)
        rates[implementation] = _rate(COMPARISON_POINTS, time.perf_counter() - started)
    if counts[Implementation.NUMBA_FUSED] != counts[Implementation.NUMPY]:
        raise SelfCheckFailed(f"the numpy kernel's implementations disagree: {counts}")
    print(
        f"  numpy impl   {COMPARISON_POINTS:,} points: numba-fused "
        f"{rates[Implementation.NUMBA_FUSED]}, numpy {rates[Implementation.NUMPY]}, "
        f"same count {counts[Implementation.NUMPY]:,}"
    )
    if policy is Policy.FUSED:
        print("  numpy impl   a worker loads numba-fused as it starts (MCPI_NUMPY_IMPL=fused)")
    else:
        print(
            f"  numpy impl   a worker runs numpy, then numba-fused once it has counted "
            f"{status.switch_after_points:,} points (MCPI_NUMPY_IMPL=auto)"
        )
