"""A worker connection without pipes or process, for driving the ``Dispatcher`` by hand.

``FakeConnection`` is what the dispatcher needs of a connection (``pool.dispatch.Connection``,
which mypy checks it against wherever a test hands one to the dispatcher): it records
what is sent, and the test makes its worker answer or break by handing the events a
``CoordinatorEnd`` would report to ``Dispatcher.on_events``.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import trio

from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.pool.dispatch import Connection, Dispatcher, Request
from mcpi_worker import protocol


class FakeConnection:
    """One fake worker of ``slot`` offering ``kernels``, speaking protocol ``version``; its
    welcome says ``implementations`` (one per kernel, or none)."""

    def __init__(
        self,
        slot: int,
        kernels: tuple[str, ...] = ("numpy", "python"),
        usable: bool = True,
        *,
        version: int = 1,
        jobs: int = 1,
        implementations: tuple[str, ...] = (),
    ) -> None:
        self.slot = slot
        self.pid = 1000 + slot
        self.usable = usable
        self.welcome: protocol.Welcome | None = protocol.Welcome(
            version, "fake", self.pid, "host", kernels, 64, 1 << 20, protocol.MAX_POINTS, jobs, implementations
        )
        self.jobs_shown = 1
        self.ended = trio.Event()
        self.end_reason: str | None = None
        self.sent: list[tuple[int, Any]] = []
        """(request id, token) of what is in flight, in the order sent: the tests read
        each token's chunk."""
        self.streams: dict[int, int] = {}
        """Request id -> the streams its sample asked for."""
        self.cancelled: list[int] = []
        self._ids = itertools.count(1)

    @property
    def in_flight(self) -> int:
        return len(self.sent)

    def holding(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def send_chunk(self, chunk: Chunk, token: Request) -> int:
        return self._send(token, chunk.streams)

    def send_ping(self, token: Request) -> int:
        return self._send(token, 1)

    def _send(self, token: Request, streams: int) -> int:
        assert self.usable
        request_id = next(self._ids)
        self.sent.append((request_id, token))
        self.streams[request_id] = streams
        return request_id

    def cancel(self, request_id: int) -> None:
        self.cancelled.append(request_id)

    def answer_all(self, dispatcher: Dispatcher, *, elapsed_s: float = 0.0, implementation: str = "") -> None:
        """Its worker answers everything in flight (each stream counting 0 inside), in
        one read, saying ``implementation`` counted it."""
        sent, self.sent = self.sent, []
        events: list[protocol.CoordinatorEvent] = []
        for i, token in sent:
            chunk = token.chunk
            if chunk is None:
                events.append(protocol.Answered(i, protocol.Pong(i), token, i in self.cancelled))
                continue
            streams = self.streams[i]
            insides = (0,) * streams if streams > 1 else None
            result = protocol.Result(
                i, 0, chunk.points * streams, elapsed_s, insides=insides, implementation=implementation
            )
            events.append(protocol.Answered(i, result, token, i in self.cancelled))
        dispatcher.on_events(self, events)

    def answer_first(self, dispatcher: Dispatcher, elapsed_s: float, implementation: str = "") -> Chunk:
        """Its worker answers the first request in flight (each stream counting 0 inside),
        computed in ``elapsed_s``; that request's chunk."""
        i, token = self.sent.pop(0)
        streams = self.streams[i]
        chunk: Chunk = token.chunk
        insides = (0,) * streams if streams > 1 else None
        result = protocol.Result(
            i, 0, chunk.points * streams, elapsed_s, insides=insides, implementation=implementation
        )
        dispatcher.on_events(self, [protocol.Answered(i, result, token, i in self.cancelled)])
        return chunk

    def refuse_all(self, dispatcher: Dispatcher, code: str) -> None:
        """Its worker answers everything in flight with an ``error`` of ``code``."""
        sent, self.sent = self.sent, []
        events: list[protocol.CoordinatorEvent] = [
            protocol.Answered(i, protocol.Error(i, code, "as the test asked"), token, i in self.cancelled)
            for i, token in sent
        ]
        dispatcher.on_events(self, events)

    def break_down(self, dispatcher: Dispatcher, reason: str = "exited (exit code 9)") -> None:
        """Its worker dies: the first request in flight was running, the others queued."""
        sent, self.sent = self.sent, []
        self.usable = False
        orphans = tuple(
            protocol.Orphan(i, token, was_running=index == 0, abandoned=i in self.cancelled)
            for index, (i, token) in enumerate(sent)
        )
        dispatcher.on_events(self, [protocol.Broken(reason, orphans)])


def record(connection: Connection, chunk: Chunk, result: protocol.Result) -> ChunkResult:
    """A ``dispatch.Record`` that counts nothing: the result as the pool's ``ChunkResult``."""
    insides = result.insides or ()
    return ChunkResult(chunk, result.inside, result.elapsed_s, connection.slot, connection.pid, None, insides)
