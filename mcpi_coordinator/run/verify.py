"""``--verify FRACTION``: recompute chunks elsewhere and compare, so a lying worker is caught.

Every chunk is deterministic, so any worker (or the coordinator itself) can compute it
again and must get the same count. ``selected`` picks the chunks to check by a seeded
rule: a keyed hash of (seed, stream) below ``FRACTION``·2⁶⁴, so the same run checks
the same chunks, whatever the pool, and a resumed run goes on with the same choice.

A checked chunk counts only once two different sources agree on it:

1. the first count, from worker A;
2. a second, from a worker on another host if one is up, else another worker, else
   the coordinator itself (in a thread): never A again;
3. if they differ, a third, from a source that is neither; the majority is the count.

The source in the minority is *condemned*: its slot is retired (``pool.retire``: one
warning naming its host and pid; its work in flight goes to the others, no
replacement starts) and every chunk it computed that was taken on trust (unchecked)
is un-counted (``Prefix.forget``, deleted from the checkpoint) and computed again
elsewhere. A result that arrives from a condemned worker later is dropped the same way.

So with ``--verify 1`` nothing a single wrong worker says is counted unless another
source agrees: it cannot change the answer. With a smaller fraction a worker that is
always wrong is caught at its first checked chunk (on average after 1/FRACTION of its
chunks) and its earlier unchecked chunks are recomputed, so the answer is still exact;
a worker wrong only once is caught if that chunk is checked.

This module is the bookkeeping and the scheduling of the extra computations;
``estimate.run_estimate`` hands it each result and is told, through two callbacks,
when a chunk is settled and which chunks to forget.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import trio

from mcpi_coordinator import logs
from mcpi_coordinator.errors import McpiError, RequestFailed
from mcpi_coordinator.pool.chunks import Chunk, ChunkResult
from mcpi_coordinator.pool.stats import SlotState, WorkerStats
from mcpi_coordinator.pool.worker_pool import WorkerPool
from mcpi_coordinator.terminal_text import printable

log = logs.get_logger("mcpi.verify")

_KEY: Final[bytes] = b"mcpi --verify v1"
"""The hash key of the selection rule: part of its definition, like the seed."""


def selected(seed: int, stream: int, fraction: float) -> bool:
    """Whether chunk ``stream`` of ``seed`` is checked when verifying ``fraction`` of them."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    digest = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8, key=_KEY).digest()
    return int.from_bytes(digest, "big") < fraction * 2.0**64


class VerificationFailed(McpiError):
    """Sources disagree on a chunk and no majority can be found."""


@dataclass(frozen=True, slots=True)
class Source:
    """Who computed a count: a worker (its slot, pid and host), or the coordinator (slot None)."""

    slot: int | None
    pid: int
    host: str | None

    def __str__(self) -> str:
        # A worker's host is its welcome's word, quoted in ``VerificationFailed`` and in
        # the reason a slot is retired, which a program embedding the run may print as
        # they are: escaped here, where the text is made (``terminal_text``).
        host = printable(self.host)
        if self.slot is None:
            return f"the coordinator (host {host}, pid {self.pid})"
        return f"worker {self.slot} (host {host}, pid {self.pid})"


COORDINATOR: Final[Source] = Source(None, os.getpid(), socket.gethostname())


def source_of(result: ChunkResult) -> Source:
    return Source(result.slot, result.pid, result.host)


@dataclass(frozen=True, slots=True)
class RetiredWorker:
    slot: int
    pid: int
    host: str | None
    stream: int
    """The chunk on which it was caught."""


@dataclass(frozen=True, slots=True)
class VerifyStats:
    """What ``--verify`` did in one run (``EstimateResult.verification``)."""

    fraction: float
    verified_chunks: int
    """Checked chunks on which two different sources agreed."""
    mismatches: int
    """Checked chunks whose first two counts differed (each took a third)."""
    local_checks: int
    """Counts the coordinator computed itself, for want of another worker."""
    recomputed_chunks: int
    """Chunks taken on trust from a condemned worker, counted again elsewhere."""
    retired: tuple[RetiredWorker, ...]


SettleFn = Callable[[int, int], None]
LocalCounter = Callable[[Chunk], Awaitable[int]]
"""Counts one chunk in the coordinator's own process (``count_here``, or a test's)."""
ForgetFn = Callable[[list[int]], None]


async def count_here(chunk: Chunk) -> int:
    """Count ``chunk`` in this process, in a thread (the kernel releases the GIL for most
    of its work); stops within a block when cancelled."""
    stop = False

    def should_stop() -> bool:
        return stop

    from mcpi_worker.kernels import KERNELS  # NumPy: loaded only by a run that checks here

    kernel = KERNELS[chunk.kernel]
    try:
        return await trio.to_thread.run_sync(
            kernel, chunk.seed, chunk.stream, chunk.points, should_stop, abandon_on_cancel=True
        )
    finally:
        stop = True  # an abandoned thread sees it at its next block and ends


@dataclass
class Verifier:
    """The ``--verify`` side of one run. ``accept`` each result from the pool; checks
    run as tasks in ``nursery``; ``settle(stream, inside)`` is called for every count
    that may be counted, ``forget(streams)`` for counts that must no longer be.

    Making one raises ``ValueError`` unless 0 <= ``fraction`` <= 1. A check that finds
    no majority raises ``VerificationFailed`` in its task, and so out of ``nursery``;
    ``run_estimate`` hands it on as itself (an ``ExceptionGroup`` unwrapped)."""

    pool: WorkerPool
    seed: int
    fraction: float
    nursery: trio.Nursery
    settle: SettleFn
    forget: ForgetFn
    count_locally: LocalCounter = count_here
    """How the coordinator counts a chunk itself when no other worker is left to."""
    pending: set[int] = field(default_factory=set)
    """Streams being checked: computed once, not yet settled."""
    verified: int = 0
    mismatches: int = 0
    local_checks: int = 0
    recomputed: int = 0
    retired: list[RetiredWorker] = field(default_factory=list)
    _condemned_pids: set[int] = field(default_factory=set)
    _condemned_slots: set[int] = field(default_factory=set)
    _trusted: dict[int, array[int]] = field(default_factory=dict)
    """Unchecked chunks taken from each worker process (by pid): forgotten if it is condemned."""
    _idle: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0 or math.isnan(self.fraction):
            raise ValueError(f"the fraction to verify must be between 0 and 1, not {self.fraction}")
        self._idle.set()

    # ------------------------------------------------------------------ work out

    def cut(self, chunk: Chunk) -> Iterator[Chunk]:
        """``chunk`` (a range of missing streams) as the requests of a verified run: each
        stream to check alone (none that is being checked already), the streams between
        them as ranges. Which are checked depends on the seed and the stream alone
        (``selected``), so the cut is the same on every pass and every resume."""
        run_start: int | None = None
        for stream in range(chunk.stream, chunk.stream + chunk.streams):
            if not selected(self.seed, stream, self.fraction):
                if run_start is None:
                    run_start = stream
                continue
            if run_start is not None:
                yield replace(chunk, stream=run_start, streams=stream - run_start)
                run_start = None
            if stream not in self.pending:
                yield replace(chunk, stream=stream, streams=1)
        if run_start is not None:
            yield replace(chunk, stream=run_start, streams=chunk.stream + chunk.streams - run_start)

    # ------------------------------------------------------------------ results in

    def accept(self, result: ChunkResult) -> None:
        """Take a first count from the pool, stream by stream (a range's): drop it (its
        worker was condemned; the streams are forgotten so that they are computed
        again), count a stream on trust, or check it."""
        chunk = result.chunk
        if result.pid in self._condemned_pids:
            self.forget(list(range(chunk.stream, chunk.stream + chunk.streams)))
            return
        for offset, inside in enumerate(result.stream_counts):
            stream = chunk.stream + offset
            if stream in self.pending:
                continue  # a duplicate of a chunk being checked (resent after its worker left)
            if not selected(self.seed, stream, self.fraction):
                self._trusted.setdefault(result.pid, array("q")).append(stream)
                self.settle(stream, inside)
                continue
            # ``cut`` sends a checked stream alone; one in a range is checked all the same.
            first = result
            if chunk.streams > 1:
                one = Chunk(chunk.seed, stream, chunk.points, chunk.kernel)
                first = replace(result, chunk=one, inside=inside, insides=())
            self.pending.add(stream)
            self._idle = trio.Event()
            self.nursery.start_soon(self._check, first, name=f"mcpi verify chunk {stream}")

    async def wait_idle(self) -> None:
        """Until no check is running."""
        await self._idle.wait()

    def stats(self) -> VerifyStats:
        return VerifyStats(
            fraction=self.fraction,
            verified_chunks=self.verified,
            mismatches=self.mismatches,
            local_checks=self.local_checks,
            recomputed_chunks=self.recomputed,
            retired=tuple(self.retired),
        )

    # ------------------------------------------------------------------ checking

    async def _check(self, first: ChunkResult) -> None:
        chunk = first.chunk
        try:
            votes = [(source_of(first), first.inside)]
            votes.append(await self._count_elsewhere(chunk, votes))
            if votes[1][1] != votes[0][1]:
                self.mismatches += 1
                votes.append(await self._count_elsewhere(chunk, votes))
            value = _majority([inside for _, inside in votes])
            if value is None:
                counts = ", ".join(f"{source} counted {inside}" for source, inside in votes)
                raise VerificationFailed(f"chunk {chunk.stream} of seed {chunk.seed}: {counts}; no two agree")
            for source, inside in votes:
                if inside != value:
                    self._condemn(source, chunk, inside, value)
            self.verified += 1
            self.pending.discard(chunk.stream)
            self.settle(chunk.stream, value)
        finally:
            self.pending.discard(chunk.stream)
            if not self.pending:
                self._idle.set()

    async def _count_elsewhere(self, chunk: Chunk, votes: list[tuple[Source, int]]) -> tuple[Source, int]:
        """Count ``chunk`` on a source that has not counted it yet: a worker on another
        host, else another worker, else the coordinator itself."""
        used = [source for source, _ in votes]
        for avoid in avoid_choices(self.pool.stats.workers, used, self._condemned_slots):
            try:
                result = await self.pool.sample(chunk, avoid=avoid)
            except RequestFailed:
                continue  # those workers went away meanwhile: the next choice
            return source_of(result), result.inside
        if COORDINATOR in used:
            counts = ", ".join(f"{source} counted {inside}" for source, inside in votes)
            raise VerificationFailed(
                f"chunk {chunk.stream} of seed {chunk.seed}: {counts}, and no other worker is left "
                "to settle it"
            )
        self.local_checks += 1
        return COORDINATOR, await self.count_locally(chunk)

    def _condemn(self, source: Source, chunk: Chunk, inside: int, value: int) -> None:
        if source.slot is None:
            # Two workers agree against this process's own kernel: trust them, and say so.
            log.warning("coordinator_count_differs", stream=chunk.stream, counted=inside, agreed=value)
            return
        if source.pid in self._condemned_pids:
            return
        self._condemned_pids.add(source.pid)
        self._condemned_slots.add(source.slot)
        self.retired.append(RetiredWorker(source.slot, source.pid, source.host, chunk.stream))
        self.pool.retire(
            source.slot,
            f"{source} counted {inside} inside for chunk {chunk.stream} of seed {chunk.seed}, "
            f"where the others agree on {value}: its unchecked chunks are computed again elsewhere",
        )
        doomed = list(self._trusted.pop(source.pid, array("q")))
        self.recomputed += len(doomed)
        if doomed:
            self.forget(doomed)


def avoid_choices(
    workers: Sequence[WorkerStats], used: Iterable[Source], condemned: Iterable[int] = ()
) -> list[frozenset[int]]:
    """The ``avoid`` sets to try, best first, for a count by none of ``used``: every slot
    but those on hosts none of them ran on (if such a worker is up), then every slot
    that counted it or was condemned (if another is up). Empty: only the coordinator is left."""
    used_slots = {s.slot for s in used if s.slot is not None} | set(condemned)
    used_hosts = {s.host for s in used if s.slot is not None}
    up = [w for w in workers if w.state not in (SlotState.RETIRED, SlotState.STOPPED) and w.slot not in used_slots]
    elsewhere = {w.slot for w in up if w.host is not None and w.host not in used_hosts}
    choices = []
    if elsewhere:
        choices.append(frozenset(w.slot for w in workers) - elsewhere)
    if up:
        choices.append(frozenset(used_slots))
    return choices


def _majority(values: Iterable[int]) -> int | None:
    counts: dict[int, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] >= 2 else None
