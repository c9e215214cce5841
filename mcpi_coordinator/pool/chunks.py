"""Units of work and their results."""

from __future__ import annotations

from dataclasses import dataclass, replace

from mcpi_coordinator.errors import InvalidChunk
from mcpi_worker.constants import DEFAULT_KERNEL
from mcpi_worker.protocol import UINT64_MAX, Sample
from mcpi_worker.protocol.admission import sample_problem
from mcpi_worker.protocol.checked import CheckedSampleFields
from mcpi_worker.protocol.messages import FIELDS


@dataclass(frozen=True, slots=True)
class Chunk(CheckedSampleFields):
    """One unit of work: count ``points`` of stream ``stream`` of ``seed`` with ``kernel``;
    with ``streams`` > 1, the same for each of that many consecutive streams (a range).

    A range's count is the sum of its streams' counts, so how a run is cut into ranges
    never changes its total. The pool may send a range in pieces sized for each worker
    (``WorkerPool.imap_unordered``).

    Raises ``InvalidChunk`` (a ``RequestFailed`` and a ``ValueError``) when it is made
    with fields no request can carry: the protocol's own check of the ``sample`` it
    becomes (``protocol.admission.sample_problem``: ``seed``, ``stream`` from 0 to
    2**64 - 1, ``points`` to 2**40, ``streams`` from 1 and not past stream 2**64 - 1,
    ``kernel`` at most 4096 characters). Whether a worker offers its ``kernel`` and
    takes its size is the pool's to say (``WorkerPool.sample``). Checked so, it is a
    ``CheckedSampleFields``: its requests are not checked against the field table again
    (``CoordinatorEnd.send_checked``).
    """

    seed: int
    stream: int
    points: int
    kernel: str = DEFAULT_KERNEL
    streams: int = 1

    def __post_init__(self) -> None:
        if _fits(self.seed, self.stream, self.points, self.kernel, self.streams):
            return  # every chunk a run makes: the field table's own tests, no Sample built
        sample = Sample(0, self.seed, self.stream, self.points, self.kernel,
                        self.streams, 1 if self.streams != 1 else None)  # fmt: skip
        raise InvalidChunk(f"not a valid chunk: {sample_problem(sample)}")

    @property
    def total_points(self) -> int:
        """Points over all its streams: ``points`` × ``streams``."""
        return self.points * self.streams

    def split(self, streams: int) -> tuple[Chunk, Chunk]:
        """The first ``streams`` streams, and the rest, as two ranges. Raises
        ``ValueError`` unless 0 < ``streams`` < ``self.streams``."""
        if not 0 < streams < self.streams:
            raise ValueError(f"cannot split {streams} streams off a range of {self.streams}")
        head = replace(self, streams=streams)
        return head, replace(self, stream=self.stream + streams, streams=self.streams - streams)


def _fits(seed: int, stream: int, points: int, kernel: str, streams: int) -> bool:
    """``protocol.admission.sample_problem`` is None for the sample this chunk becomes,
    by the same rules (the field table's, and the last stream's), without building it;
    tests/pool/test_chunk_fields.py holds the two equal."""
    return (
        _SEED(seed) and _STREAM(stream) and _POINTS(points) and _KERNEL(kernel) and _STREAMS(streams)
        and stream + streams - 1 <= UINT64_MAX
    )  # fmt: skip


_SEED, _STREAM, _POINTS, _KERNEL, _STREAMS = (
    FIELDS[Sample][name].valid for name in ("seed", "stream", "points", "kernel", "streams")
)


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What one worker counted for one chunk (or for one piece of a range: ``chunk``
    names the streams it covers)."""

    chunk: Chunk
    inside: int
    """Points inside, over all the chunk's streams."""
    elapsed_s: float
    """The worker's own measure of the time it spent computing the chunk."""
    slot: int
    """The pool slot whose worker counted it."""
    pid: int
    """The pid of the local process the pool runs for that worker (``WorkerProcess.pid``:
    for an ssh or Slurm worker, its ``ssh`` or ``srun``; the worker's own is in its
    welcome)."""
    host: str | None = None
    """The host the worker said it runs on (its ``welcome``)."""
    insides: tuple[int, ...] = ()
    """For a range, the count of each stream in order (empty for one stream)."""
    implementation: str = ""
    """Which implementation of the kernel counted it, as its worker said (may be empty)."""

    @property
    def stream_counts(self) -> tuple[int, ...]:
        """The count of each of the chunk's streams, in order."""
        return self.insides or (self.inside,)
