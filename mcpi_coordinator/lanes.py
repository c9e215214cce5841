"""Free pipelining lanes of the pool's workers, handed out retries first.

A lane is permission to have one more request in flight on one worker. A ready
worker offers ``depth`` lanes, and one more each time it answers a request; a request
takes a lane, so work is pulled by whoever has room.

Why not a plain Trio memory channel: a request whose worker died must go *before* the
fresh ones. Behind them it would land deep in some worker's queue, and a worker that
dies after every N requests (a leak, an OOM killer) would catch the same unlucky chunk
over and over, until it looked like a poison chunk. First in line, a retried chunk is
the next thing some worker computes.

Invariant: a lane is either in ``_free`` or handed directly to a waiter, never both.
``offer`` prefers waiters, so lanes sit in ``_free`` only while nobody waits (or
while a waiter woken with a stale lane has yet to run: it looks there first).
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import trio


class Lane(Protocol):
    @property
    def usable(self) -> bool: ...


L = TypeVar("L", bound=Lane)


@dataclass(eq=False)
class _Waiter(Generic[L]):
    woken: trio.Event = field(default_factory=trio.Event)
    lane: L | None = None


class Lanes(Generic[L]):
    def __init__(self) -> None:
        self._free: deque[L] = deque()
        self._retries: deque[_Waiter[L]] = deque()
        self._fresh: deque[_Waiter[L]] = deque()
        self._closed: Exception | None = None

    def __repr__(self) -> str:
        return f"<Lanes free={len(self._free)} waiting={len(self._retries)}+{len(self._fresh)}>"

    def offer(self, lane: L) -> None:
        """Make ``lane`` available: to the first retry waiting, else the first fresh
        request waiting, else to whoever asks next. Ignored once closed, or if the
        lane's worker is no longer usable."""
        if self._closed is not None or not lane.usable:
            return
        for queue in (self._retries, self._fresh):
            if queue:
                waiter = queue.popleft()
                waiter.lane = lane
                waiter.woken.set()
                return
        self._free.append(lane)

    def take_nowait(self) -> L | None:
        """A usable lane that is free now, or None. Raises the error given to ``close``
        once closed. Not a checkpoint: for callers that reach one right after (the
        pool awaits the request's answer), saving a scheduler pass per request."""
        if self._closed is not None:
            raise copy.copy(self._closed)  # one instance per raise: tracebacks differ
        while self._free:
            lane = self._free.popleft()
            if lane.usable:
                return lane
        return None

    async def take(self, *, retry: bool = False) -> L:
        """The next usable lane; lanes of workers that failed meanwhile are skipped.
        Raises the error given to ``close`` once closed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            lane = self.take_nowait()
            if lane is not None:
                # Taken without a cancellable wait, so it cannot be lost to a cancel.
                await trio.lowlevel.cancel_shielded_checkpoint()
                return lane
            waiter: _Waiter[L] = _Waiter()
            queue = self._retries if retry else self._fresh
            queue.append(waiter)
            try:
                await waiter.woken.wait()
            except BaseException:
                if waiter.lane is not None:
                    self.offer(waiter.lane)  # handed to us as we were cancelled: pass it on
                else:
                    queue.remove(waiter)
                raise
            if waiter.lane is not None and waiter.lane.usable:
                return waiter.lane
            # A stale lane (its worker failed meanwhile). Lanes offered while we were
            # being woken went to ``_free``: look there first, then wait again, near
            # the front this time.
            retry = True

    def close(self, error: Exception) -> None:
        """No more lanes: every waiter, and every later ``take``, raises ``error``."""
        if self._closed is not None:
            return
        self._closed = error
        self._free.clear()
        for queue in (self._retries, self._fresh):
            while queue:
                queue.popleft().woken.set()

    @property
    def closed(self) -> bool:
        return self._closed is not None
