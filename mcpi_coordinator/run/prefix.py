"""Which completed chunks an estimate counts: the contiguous prefix of streams 0..k−1.

Chunks finish in whatever order the workers manage. An early stop that counted
"whatever had finished" would report a count nobody can repeat: it would depend on
timing, on the number of workers, on a slow host. Counting only the streams 0..k−1
that all completed makes every reported count equal ``mcpi estimate --points k·C``
(the last chunk of a run may be shorter: ``points`` says exactly), on any pool.
Chunks that finished beyond the first gap are kept aside and counted once the gap
fills; at a stop they are discarded (and reported as such).

The ``--target-error`` rule is applied to the prefix at every k in turn, however
many streams one arrival completes, so the stop is the *smallest* k whose prefix
meets it: a pure function of (seed, points, chunk size, kernel, target), the same on
1 worker or 1000, on a resumed run, on a run whose workers died and were replaced.
``reference_prefix`` computes it without a pool, which is what makes the coverage
of the stopping rule cheap to test over many seeds.

A run's ``--part I/K`` (``parts`` module) is counted the same way over its own streams
first..end−1: the prefix is first..first+k−1, and once complete it is the part's count.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

from mcpi_coordinator.run.statistics import StopRule
from mcpi_worker.constants import DEFAULT_KERNEL

if TYPE_CHECKING:
    from mcpi_coordinator.run.parts import Part

_MISSING = -1

FEW: Final[int] = 256
"""Streams an arrival or a scan handles one by one in Python; past this many, by
``array.array``'s and the builtins' C loops (``min``, ``max``, ``count``, ``index``,
``sum``), with the same answers. The coordinator loads no NumPy for its bookkeeping:
its import was a twentieth of a second of a run of many small chunks."""

class Prefix:
    """Completed chunks by stream, and the prefix an estimate counts.

    ``k`` is the prefix length (streams ``first``..``first``+k−1 all completed, and
    counted in ``inside``/``points``; ``first`` is 0 but in a ``part`` of the run);
    ``stopped`` says the stop rule was reached at ``k``, after which the prefix no
    longer grows. Memory is 8 bytes per stream up to the highest
    one completed (``array('q')``), as the per-chunk counts for plots always took.

    Making one raises ``ValueError`` for a ``chunk_size`` below 1, negative ``points``,
    or a ``part`` the run has too few chunks for.
    """

    def __init__(
        self, points: int, chunk_size: int, rule: StopRule | None = None, part: Part | None = None
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if points < 0:
            raise ValueError("points must be 0 or more")
        self.requested_points = points
        self.chunk_size = chunk_size
        self.rule = rule if rule is not None else StopRule()
        self.total_chunks = -(-points // chunk_size)
        """The whole run's chunks, also in a part of it."""
        self.part = part
        span = range(self.total_chunks) if part is None else part.streams(self.total_chunks)
        self.first, self.end = span.start, span.stop
        self.k = 0
        self.inside = 0
        self.points = 0
        self.stopped = False
        self._completed = 0
        self._counts = array("q")  # inside count by stream; _MISSING until it completes

    # ------------------------------------------------------------------ queries

    def chunk_points(self, stream: int) -> int:
        """The points of chunk ``stream``: ``chunk_size``, the last one what remains.
        Raises ``ValueError`` for a stream outside the run (or its part)."""
        if not self.first <= stream < self.end:
            what = "run" if self.part is None else f"part {self.part}"
            raise ValueError(f"stream {stream} is not a chunk of this {what} ({self.first}..{self.end - 1})")
        return min(self.chunk_size, self.requested_points - stream * self.chunk_size)

    @property
    def chunks(self) -> int:
        """Chunks to count: the run's, or its part's."""
        return self.end - self.first

    def has(self, stream: int) -> bool:
        index = stream - self.first
        return 0 <= index < len(self._counts) and self._counts[index] != _MISSING

    def has_any(self, first: int, streams: int) -> bool:
        """Some chunk of ``first .. first + streams - 1`` is counted already."""
        start = max(first - self.first, 0)
        end = min(first + streams - self.first, len(self._counts))
        if end <= start:
            return False
        return self._counts[start:end].count(_MISSING) != end - start

    @property
    def complete(self) -> bool:
        """Every chunk of the run (or part) is in the prefix."""
        return self.k == self.chunks

    @property
    def finished(self) -> bool:
        """Nothing more to compute: the rule stopped the prefix, or it is complete."""
        return self.stopped or self.complete

    @property
    def completed(self) -> int:
        """Chunks completed, in the prefix or beyond it."""
        return self._completed

    @property
    def beyond(self) -> int:
        """Completed chunks that the prefix does not count (past a gap, or past a stop)."""
        return self._completed - self.k

    def missing(self) -> Iterator[int]:
        """The streams still to compute, in order, lazily: from ``k`` on, skipping those
        completed beyond the gap; none once the prefix is finished."""
        stream = self.first + self.k
        while stream < self.end and not self.finished:
            if not self.has(stream):
                yield stream
            stream += 1

    def missing_runs(self, longest: int) -> Iterator[range]:
        """What ``missing`` gives, a run of consecutive streams at a time (at most
        ``longest`` each), in order, lazily. Past the last chunk counted, every stream is
        missing, so that rest is cut into runs without a look at each stream: walked
        stream by stream, a fresh run of 1e5 chunks kept the coordinator busy for a sixth
        of a second before its first request."""
        counts = self._counts  # grows in place as chunks are counted between two runs
        stream = self.first + self.k
        while stream < self.end and not self.finished:
            index = stream - self.first
            if index < len(counts) and counts[index] != _MISSING:
                stream += 1
                continue
            stop = min(stream + longest, self.end)
            end = stream + 1
            while end < stop and end - self.first < len(counts) and counts[end - self.first] == _MISSING:
                end += 1
            if end - self.first >= len(counts):  # nothing counted from here on
                end = stop
            yield range(stream, end)
            stream = end

    def counted(self) -> tuple[array[int], array[int]]:
        """The prefix's chunks, in stream order: (points of each, inside of each)."""
        inside = self._counts[: self.k]
        points = array("q", [self.chunk_size]) * self.k
        if self.k and self.first + self.k == self.total_chunks:
            points[-1] = self.chunk_points(self.total_chunks - 1)
        return points, inside

    def items(self) -> Iterator[tuple[int, int]]:
        """Every completed chunk as (stream, inside), in stream order."""
        for stream, inside in enumerate(self._counts, start=self.first):
            if inside != _MISSING:
                yield stream, inside

    # ------------------------------------------------------------------ changes

    def add(self, stream: int, inside: int) -> None:
        """Count chunk ``stream``'s result; the prefix grows if it filled the gap. Raises
        ``ValueError``, counting nothing, for a stream outside the run, an impossible
        count, or a chunk counted already."""
        points = self.chunk_points(stream)
        if not 0 <= inside <= points:
            raise ValueError(f"chunk {stream}: {inside} inside of {points} points is impossible")
        if self.has(stream):
            raise ValueError(f"chunk {stream} was already counted")
        index = stream - self.first
        if index >= len(self._counts):
            self._counts.extend(array("q", [_MISSING]) * (index + 1 - len(self._counts)))
        self._counts[index] = inside
        self._completed += 1
        if index == self.k:
            self._advance()

    def add_run(self, first: int, insides: Sequence[int]) -> None:
        """Count chunks ``first, first + 1, ...`` at once (a range's result): checked
        in full before anything changes, like ``add`` one by one, at a fraction of the
        cost (one by one, this bookkeeping kept a coordinator core busy at small chunk
        sizes; ``benchmarks/scale.py`` measures the coordinator's CPU per request).
        Raises ``ValueError``, counting none of them, as ``add`` would for any one."""
        streams = len(insides)
        if streams == 0:
            return
        last = first + streams - 1
        if first < self.first or last >= self.end:
            what = "run" if self.part is None else f"part {self.part}"
            raise ValueError(f"chunks {first}..{last} are not all chunks of this {what} ({self.first}..{self.end - 1})")
        if streams <= FEW:
            for at, inside in enumerate(insides):
                limit = self.chunk_size if at < streams - 1 else self.chunk_points(last)
                if not 0 <= inside <= limit:
                    raise ValueError(f"chunk {first + at}: {inside} inside of {limit} points is impossible")
            new = array("q", insides)
        else:  # the same checks, by the array's C loops (min, max) unless one fails
            new = array("q", insides)
            if min(new) < 0 or max(new) > self.chunk_size or new[-1] > self.chunk_points(last):
                for at, inside in enumerate(new):
                    limit = self.chunk_size if at < streams - 1 else self.chunk_points(last)
                    if not 0 <= inside <= limit:
                        raise ValueError(f"chunk {first + at}: {inside} inside of {limit} points is impossible")
        if self.has_any(first, streams):
            raise ValueError(f"a chunk of {first}..{last} was already counted")
        index, end = first - self.first, last + 1 - self.first
        if end > len(self._counts):
            self._counts.extend(array("q", [_MISSING]) * (end - len(self._counts)))
        self._counts[index:end] = new
        self._completed += streams
        if index == self.k:
            self._advance()

    def forget(self, streams: Iterable[int]) -> None:
        """Un-count these chunks (their worker was caught lying): they are missing
        again, and the prefix and its stop are worked out anew up to the first of them."""
        earliest: int | None = None
        for stream in streams:
            if self.has(stream):
                self._counts[stream - self.first] = _MISSING
                self._completed -= 1
                earliest = stream if earliest is None else min(earliest, stream)
        if earliest is not None and earliest < self.first + self.k:
            # Rare (a condemned worker), so the simple way: replay the rule from 0.
            self.k = self.inside = self.points = 0
            self.stopped = False
            self._advance()

    def _advance(self) -> None:
        counts, rule = self._counts, self.rule
        if rule.target_error is None and not self.stopped:
            # No rule to check at every k: move over the completed run at once.
            if len(counts) - self.k <= FEW:
                end = self.k
                while end < len(counts) and counts[end] != _MISSING:
                    end += 1
                self.inside += sum(counts[self.k : end])
            else:
                try:
                    end = counts.index(_MISSING, self.k)
                except ValueError:  # no gap: every chunk counted so far is in the prefix
                    end = len(counts)
                self.inside += sum(counts[self.k : end])
            self.points += (end - self.k) * self.chunk_size
            if self.first + end == self.total_chunks and end > self.k:
                self.points -= self.chunk_size - self.chunk_points(self.total_chunks - 1)
            self.k = end

            return
        while not self.stopped and self.k < len(counts) and counts[self.k] != _MISSING:
            self.inside += counts[self.k]
            self.points += self.chunk_points(self.first + self.k)
            self.k += 1
            # Checked at every k, not once per arrival, so the stop is the first k
            # that meets the rule whatever order the chunks came in.
            self.stopped = rule.reached(self.inside, self.points)


def reference_prefix(
    seed: int,
    points: int,
    chunk_size: int,
    *,
    kernel: str = DEFAULT_KERNEL,
    target_error: float | None = None,
    rule: StopRule | None = None,
    part: Part | None = None,
) -> Prefix:
    """What any pool must report for this run: the chunks counted in this process, in
    stream order, until the prefix is finished (of the whole run, or of its ``part``).
    The stop rule is ``StopRule(target_error)`` unless ``rule`` is given."""

    from mcpi_worker.kernels import KERNELS

    count = KERNELS[kernel]
    prefix = Prefix(points, chunk_size, rule if rule is not None else StopRule(target_error), part)
    for stream in prefix.missing():
        prefix.add(stream, count(seed, stream, prefix.chunk_points(stream), lambda: False))
    return prefix
