"""One run split over several coordinators: ``--part I/K``, and combining the parts.

A run's chunks are streams 0..n−1 (n = ceil(points / chunk size), the last chunk what
remains), and its count is their sum, whoever computed each. So a run can be cut into
K parts, each counted by its own coordinator (one per Slurm allocation, per site, per
day), and the parts' counts added: the sum is bit for bit the count of the whole run
on one coordinator, and so are π, its standard error and its interval, which are
functions of (inside, points) alone.

Part I of K is the streams [⌊n(I−1)/K⌋, ⌊nI/K⌋): contiguous, so that a part is a
range the pool sends in pieces like any run; every chunk in exactly one part; sizes
differing by at most one chunk. The bounds need nothing but (n, I, K), so K
coordinators that never talk to each other agree on them.

``combine`` takes the parts' ``--json`` documents and refuses anything that would
not add up to the whole run: a missing or repeated part, parts of different runs, a
part that stopped early, counts that do not fit the part (or its own π), a value that
is not a number. A whole run's document (no ``part``) combines to itself when it is
the only one given, so a script can treat one coordinator as K = 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from mcpi_coordinator import files
from mcpi_coordinator.errors import McpiError
from mcpi_coordinator.run.statistics import pi_statistics
from mcpi_worker.constants import KERNEL_VERSIONS


@dataclass(frozen=True, slots=True)
class Part:
    """Part ``index`` (1..``of``) of a run cut into ``of`` parts. Making one raises
    ``ValueError`` unless 1 <= ``index`` <= ``of``."""

    index: int
    of: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.of:
            raise ValueError(f"part {self.index}/{self.of}: I/K needs 1 <= I <= K")

    def __str__(self) -> str:
        return f"{self.index}/{self.of}"

    def streams(self, total_chunks: int) -> range:
        """The part's chunks (streams) of a run of ``total_chunks`` chunks. Raises
        ``ValueError`` (a line for the user) when the run has fewer chunks than parts."""
        if self.of > total_chunks:
            raise ValueError(f"--part {self}: a run of {total_chunks:,} chunks has at most {total_chunks:,} parts")
        return part_streams(total_chunks, self.index, self.of)

    def points(self, points: int, chunk_size: int) -> int:
        """The points of the part's chunks, the run's shorter last chunk included; raises
        as ``streams`` does."""
        span = self.streams(-(-points // chunk_size))
        return min(span.stop * chunk_size, points) - span.start * chunk_size


def part_streams(total_chunks: int, index: int, of: int) -> range:
    """Streams [⌊n(I−1)/K⌋, ⌊nI/K⌋) of n = ``total_chunks``: never empty for K <= n."""
    return range(total_chunks * (index - 1) // of, total_chunks * index // of)


def parse_part(text: str) -> Part:
    """``"2/3"`` → Part(2, 3); ValueError with a line a user can act on otherwise."""
    index, slash, of = text.strip().partition("/")
    if not slash or not index.strip().isdigit() or not of.strip().isdigit():
        raise ValueError(f"{text!r} is not I/K (part I of K, e.g. 2/3)")
    try:
        return Part(int(index), int(of))
    except ValueError:
        raise ValueError(f"{text!r}: part I/K needs 1 <= I <= K") from None


def part_json(part: Part, total_chunks: int) -> dict[str, int]:
    """The ``part`` object of ``mcpi estimate --json`` (what ``read_part`` checks);
    raises as ``Part.streams`` does."""
    span = part.streams(total_chunks)
    return {"index": part.index, "of": part.of, "first_chunk": span.start, "chunks": len(span)}


# ---------------------------------------------------------------------- combining


class CombineRefused(McpiError):
    """Inputs that do not add up to one whole run; ``str()`` is one line naming the file."""


@dataclass(frozen=True, slots=True)
class RunKey:
    """What the parts of one run share."""

    seed: int
    requested_points: int
    chunk_size: int
    kernel: str
    parts: int

    def describe(self) -> str:
        return (
            f"seed {self.seed}, {self.requested_points:,} points, chunk size {self.chunk_size:,}, "
            f"kernel {self.kernel}, {self.parts} parts"
        )


@dataclass(frozen=True, slots=True)
class PartCount:
    """One part's document, checked: its run, which part, what it counted."""

    source: str
    key: RunKey
    part: Part
    first_chunk: int
    chunks: int
    inside: int
    points: int
    workers: int
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Combined:
    """The whole run's count, from its parts (in part order)."""

    key: RunKey
    inside: int
    points: int
    parts: tuple[PartCount, ...]

    @property
    def chunks(self) -> int:
        return -(-self.key.requested_points // self.key.chunk_size)


MCPI_WRITES: Final[str] = "mcpi estimate --part I/K --json"

MAX_COUNT: Final[int] = 2**53
"""The most points (and so chunks, chunk size, parts, inside) a run has: the most
``mcpi estimate --points`` takes."""


def load_document(source: str, text: str) -> dict[str, Any]:
    """The JSON object in ``text``; CombineRefused (naming ``source``) if it is none,
    or nests, or holds numbers, beyond what mcpi writes (``files.json_loads_limited``)."""
    try:
        document = files.json_loads_limited(text)
    except ValueError as error:  # JSONDecodeError is one; so is a NaN or a 1e400
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CombineRefused(f"{source}: not the JSON {MCPI_WRITES} prints ({reason})") from None
    if not isinstance(document, dict):
        raise CombineRefused(f"{source}: not the JSON object {MCPI_WRITES} prints")
    return document


def _shown(value: Any) -> str:
    """A value from the file, for a message: its repr, cut short (a file may hold a
    4 MiB string). Control characters are escaped as the message is printed."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _whole(document: Mapping[str, Any], name: str, source: str, low: int, high: int = MAX_COUNT) -> int:
    value = document.get(name)
    if name not in document:  # not a wrong value: a document of another kind altogether
        raise CombineRefused(f"{source}: not the JSON {MCPI_WRITES} prints (it has no {name!r})")
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise CombineRefused(f"{source}: {name} is {_shown(value)}, not a whole number >= {low}")
    if value > high:
        raise CombineRefused(f"{source}: {name} is {value:,}, more than mcpi writes (at most {high:,})")
    return value


def read_part(source: str, document: Mapping[str, Any]) -> PartCount:
    """Check one document alone: a complete part (or a complete whole run) of a run.
    Returns what it counted; raises ``CombineRefused`` (naming ``source``) for a field
    missing or out of range, a part that stopped early or is not whole, or counts that
    contradict each other."""
    seed = _whole(document, "seed", source, 0, 2**64 - 1)
    requested = _whole(document, "requested_points", source, 1)
    chunk_size = _whole(document, "chunk_size", source, 1)
    inside = _whole(document, "inside", source, 0)
    points = _whole(document, "points", source, 1)
    kernel = document.get("kernel")
    if not isinstance(kernel, str) or kernel not in KERNEL_VERSIONS:
        # Checked against the kernels mcpi has: the name is printed in a command to copy.
        raise CombineRefused(f"{source}: kernel is {_shown(kernel)}, not a kernel mcpi has")
    total = -(-requested // chunk_size)
    raw = document.get("part")
    if raw is None:
        part, what = Part(1, 1), "the whole run"
    else:
        if not isinstance(raw, dict):
            raise CombineRefused(f"{source}: part is {_shown(raw)}, not a part object")
        index, of = _whole(raw, "index", source, 1), _whole(raw, "of", source, 1)
        if index > of or of > total:
            raise CombineRefused(f"{source}: part {index}/{of} is not a part of a run of {total:,} chunks")
        part, what = Part(index, of), f"part {index} of {of}"
        span = part.streams(total)
        first_chunk, chunks = _whole(raw, "first_chunk", source, 0), _whole(raw, "chunks", source, 1)
        if (first_chunk, chunks) != (span.start, len(span)):
            raise CombineRefused(
                f"{source}: {what} of {total:,} chunks is chunks {span.start}..{span.stop - 1}, "
                f"not the {chunks} from {first_chunk} it names"
            )
    stopped = document.get("stopped_early")
    expected = part.points(requested, chunk_size)
    if stopped is not None:
        raise CombineRefused(
            f"{source}: {what} stopped early ({stopped if stopped in _STOPS else _shown(stopped)}) after "
            f"{points:,} of its {expected:,} points: "
            "run it to the end (--resume its checkpoint, or run it again) before combining"
        )
    if points != expected:
        raise CombineRefused(f"{source}: {what} has {points:,} points, not its {expected:,}")
    if inside > points:
        raise CombineRefused(f"{source}: {inside:,} inside of {points:,} points is impossible")
    pi = document.get("pi")
    if pi is not None and pi != pi_statistics(inside, points).pi:
        raise CombineRefused(f"{source}: its pi {_shown(pi)} is not that of its counts: the file was changed")
    workers = document.get("workers", 0)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 0 <= workers <= MAX_COUNT:
        workers = 0  # only shown: not worth refusing a part for
    elapsed = document.get("elapsed_s", 0.0)
    return PartCount(
        source=source,
        key=RunKey(seed, requested, chunk_size, kernel, part.of),
        part=part,
        first_chunk=part.streams(total).start,
        chunks=len(part.streams(total)),
        inside=inside,
        points=points,
        workers=workers,
        elapsed_s=float(elapsed) if isinstance(elapsed, int | float) and math.isfinite(elapsed) else 0.0,
    )


_STOPS: Final[tuple[str, ...]] = ("max_time", "target_error")
"""The values of ``stopped_early`` that mcpi writes (``estimate.Stop``), shown as they are."""


def combine(documents: Sequence[tuple[str, Mapping[str, Any]]]) -> Combined:
    """The whole run from its parts' documents ((source, document) pairs), or
    CombineRefused naming the first source that does not fit."""
    if not documents:
        raise CombineRefused("no files to combine")
    counts = [read_part(source, document) for source, document in documents]
    first = counts[0]
    seen: dict[int, PartCount] = {}
    for count in counts:
        if (count.key.parts == 1) != (first.key.parts == 1):
            whole, other = (count, first) if count.key.parts == 1 else (first, count)
            raise CombineRefused(
                f"{whole.source}: a whole run (no --part), which combines only alone, not with parts "
                f"such as {other.source}"
            )
        if count.key != first.key:
            raise CombineRefused(
                f"{count.source}: a part of another run: {count.key.describe()}, "
                f"not {first.key.describe()} as in {first.source}"
            )
        earlier = seen.get(count.part.index)
        if earlier is not None:
            raise CombineRefused(
                f"{count.source}: part {count.part} again (already in {earlier.source}): each part counts once"
            )
        seen[count.part.index] = count
    missing = [index for index in range(1, first.key.parts + 1) if index not in seen]
    if missing:
        given = ", ".join(f"{c.part.index} in {c.source}" for c in sorted(counts, key=lambda c: c.part.index))
        names = ", ".join(str(index) for index in missing)
        raise CombineRefused(
            f"missing part{'s' if len(missing) > 1 else ''} {names} of {first.key.parts} (given: {given})"
        )
    ordered = tuple(seen[index] for index in range(1, first.key.parts + 1))
    return Combined(
        key=first.key,
        inside=sum(c.inside for c in ordered),
        points=sum(c.points for c in ordered),
        parts=ordered,
    )
