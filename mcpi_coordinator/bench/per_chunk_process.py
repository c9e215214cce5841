"""Approaches that start a fresh ``mcpi-worker`` for every chunk, at most ``workers`` at once.

This is the lesson's "subprocess per task" pattern, written twice: with asyncio
(``create_subprocess_exec`` and a ``Semaphore``) and with Trio (``trio.run_process``
and a ``CapacityLimiter``). The protocol exchange is the shared ``OneShotExchange``;
only the I/O differs. Every chunk pays an interpreter start and a NumPy import, which
is exactly what these rows of the table teach.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Sequence
from functools import partial

import trio

from mcpi_coordinator.bench.measure import Measurement, run_trio, timed_async
from mcpi_coordinator.bench.one_shot import OneShotExchange, exit_failure
from mcpi_coordinator.bench.workload import Workload

READ_SIZE = 65536


def _exchanges(workload: Workload) -> list[OneShotExchange]:
    return [
        OneShotExchange(workload.seed, chunk.stream, chunk.points, workload.kernel)
        for chunk in workload.chunks()
    ]


# ------------------------------------------------------------------------- asyncio


async def _asyncio_chunk(
    command: Sequence[str], exchange: OneShotExchange, semaphore: asyncio.Semaphore
) -> int:
    async with semaphore:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin and process.stdout and process.stderr
        # stderr is read all along: a worker blocked on a full stderr pipe never answers.
        stderr_reader = asyncio.create_task(process.stderr.read())
        inside = None
        try:
            try:
                process.stdin.write(exchange.data_to_send())  # the hello
                await process.stdin.drain()
                while inside is None and (data := await process.stdout.read(READ_SIZE)):
                    inside = exchange.receive(data)
                    process.stdin.write(exchange.data_to_send())  # the sample, then shutdown
                    await process.stdin.drain()
                process.stdin.close()
            except ConnectionError:
                pass  # the worker is gone; its exit status below says why
            returncode = await process.wait()
        finally:
            if process.returncode is None:  # cancelled, or the worker broke the protocol
                process.kill()
                await process.wait()
        stderr = await stderr_reader
        if returncode != 0:
            raise exit_failure(returncode, stderr)
        if inside is None:
            raise exchange.end_of_stream()
        return inside


async def _asyncio_count(workload: Workload) -> int:
    semaphore = asyncio.Semaphore(workload.workers)
    async with asyncio.TaskGroup() as group:
        chunks = [
            group.create_task(_asyncio_chunk(workload.worker_command, exchange, semaphore))
            for exchange in _exchanges(workload)
        ]
    return sum(chunk.result() for chunk in chunks)


async def _asyncio_measure(workload: Workload, repeat: int) -> Measurement:
    runs = [await timed_async(lambda: _asyncio_count(workload)) for _ in range(repeat)]
    return Measurement("asyncio-subprocess", startup_s=None, runs=tuple(runs))


def asyncio_subprocess(workload: Workload, repeat: int) -> Measurement:
    return asyncio.run(_asyncio_measure(workload, repeat))


# ---------------------------------------------------------------------------- trio


async def _trio_chunk(
    command: Sequence[str], exchange: OneShotExchange, limiter: trio.CapacityLimiter
) -> int:
    inside = None
    async with limiter, trio.open_nursery() as nursery:
        # Started as a task, run_process hands us the live Process to talk to, and
        # still owns its end: it drains stderr, reaps the child, terminates it if we
        # are cancelled, and raises CalledProcessError (with stderr) on a bad exit.
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                list(command),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                capture_stderr=True,
            )
        )
        assert process.stdin and process.stdout
        try:
            await process.stdin.send_all(exchange.data_to_send())  # the hello
            while inside is None and (data := await process.stdout.receive_some(READ_SIZE)):
                inside = exchange.receive(data)
                if pending := exchange.data_to_send():  # the sample, then shutdown
                    await process.stdin.send_all(pending)
        except trio.BrokenResourceError:
            pass  # the worker is gone; run_process raises with its exit status and stderr
        await process.stdin.aclose()
    if inside is None:
        raise exchange.end_of_stream()
    return inside


async def _trio_count(workload: Workload) -> int:
    limiter = trio.CapacityLimiter(workload.workers)
    counts: list[int] = []

    async def one(exchange: OneShotExchange) -> None:
        counts.append(await _trio_chunk(workload.worker_command, exchange, limiter))

    async with trio.open_nursery() as nursery:
        for exchange in _exchanges(workload):
            nursery.start_soon(one, exchange)
    return sum(counts)


async def _trio_measure(workload: Workload, repeat: int) -> Measurement:
    runs = [await timed_async(lambda: _trio_count(workload)) for _ in range(repeat)]
    return Measurement("trio-run-process", startup_s=None, runs=tuple(runs))


def trio_run_process(workload: Workload, repeat: int) -> Measurement:
    return run_trio(_trio_measure, workload, repeat)
