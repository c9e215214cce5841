"""Can this worker take this sample: the one statement of that rule, and its fast forms.

A worker that sent a ``welcome`` refuses a ``sample`` for one of the reasons of
protocol.md §6.1 and §8 step 7 (``refusal``), and no frame may be larger than it takes
(``framing.frame_problem``). Every party that decides whether a sample may go to a
worker asks these functions: the worker's end (``WorkerEnd``) refuses by them, the
coordinator's end (``CoordinatorEnd.send_sample``) never sends what they refuse, and
the pool's dispatcher routes and sizes requests by them (``plain_verdict``,
``most_streams``: forms of ``refusal`` that are quick for the common cases, and are held
equal to it by the tests). Pure functions of a ``Welcome`` and a ``Sample``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from mcpi_worker.constants import MAX_POINTS
from mcpi_worker.protocol.framing import encode, frame_problem
from mcpi_worker.protocol.messages import (
    HEADER,
    MAX_GROUPS,
    MAX_STREAMS,
    MAX_TEXT,
    RANGE_VERSION,
    UINT64_MAX,
    ErrorCode,
    Ping,
    Sample,
    Welcome,
    field_problem,
    quote,
)


class Unfit(Enum):
    """Which rule keeps a worker from taking a sample, in the order they are checked."""

    KERNEL = "kernel"
    """The worker does not offer the sample's kernel (answered ``unknown_kernel``)."""
    VERSION = "version"
    """A range (``streams``, ``group``) on a connection of a version before ``RANGE_VERSION``."""
    PAST_END = "past_end"
    """The range's streams go past 2**64 - 1."""
    STREAMS = "streams"
    """More streams than ``MAX_STREAMS``."""
    POINTS = "points"
    """``streams`` × ``points`` above the worker's ``max_points``."""
    GROUPS = "groups"
    """More counts than ``MAX_GROUPS`` to report."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a worker refuses a sample: the rule (``rule``) and the protocol's words for it
    (``message``, which may quote the peer's kernel names: escape it before showing it
    on a terminal)."""

    rule: Unfit
    message: str

    @property
    def code(self) -> ErrorCode:
        """What the worker answers it with (protocol.md §8)."""
        return ErrorCode.UNKNOWN_KERNEL if self.rule is Unfit.KERNEL else ErrorCode.INVALID_REQUEST


def refusal(welcome: Welcome, sample: Sample) -> Refusal | None:
    """Why the worker that sent ``welcome`` must refuse ``sample``, or None when it must
    take it, room permitting (``busy`` is the worker's own count). protocol.md §8 step 7
    and §6.1, checked in the order of ``Unfit``. What the field table says of each field
    (``messages.field_problem``) is not checked here, and breaks nothing here."""
    if sample.kernel not in welcome.kernels:
        offered = ", ".join(welcome.kernels)
        return Refusal(Unfit.KERNEL, f"unknown kernel {quote(sample.kernel)}; this worker offers {offered}")
    version = welcome.version
    if sample.is_range and version < RANGE_VERSION:
        why = f"'streams' and 'group' need protocol version {RANGE_VERSION} (this connection speaks {version})"
        return Refusal(Unfit.VERSION, why)
    if (past := _past_end(sample)) is not None:
        return Refusal(Unfit.PAST_END, past)
    if sample.streams > MAX_STREAMS:
        return Refusal(Unfit.STREAMS, f"{sample.streams} streams is above the limit of {MAX_STREAMS} a range")
    if sample.total_points > welcome.max_points:
        why = f"{sample.streams} x {sample.points} points is above this worker's max_points {welcome.max_points}"
        return Refusal(Unfit.POINTS, why)
    if sample.group_size > 0 and sample.groups > MAX_GROUPS:  # below 1: a field's rule (FIELDS)
        return Refusal(Unfit.GROUPS, f"{sample.groups} groups of streams is above the limit of {MAX_GROUPS}")
    return None


def _past_end(sample: Sample) -> str | None:
    last = sample.stream + sample.streams - 1
    return f"streams {sample.stream} to {last} go past 2**64-1" if last > UINT64_MAX else None


def sample_problem(sample: Sample) -> str | None:
    """What makes ``sample`` one that no worker takes, whatever its welcome, or None: a
    field against the field table (``field_problem``), or streams going past 2**64-1.
    For a sender that checks its work where it is made (``Chunk``)."""
    return field_problem(sample) or _past_end(sample)


def sample_frame_size(sample: Sample) -> int:
    """The body size of ``sample``'s frame with its id at its widest (2**64 - 1): what a
    sender checks against the worker's ``max_frame`` before it knows the id."""
    widest = Sample(UINT64_MAX, sample.seed, sample.stream, sample.points, sample.kernel, sample.streams, sample.group)
    return len(encode(widest)) - HEADER.size


def sending_problem(welcome: Welcome, sample: Sample) -> Refusal | str | None:
    """Everything that keeps ``sample`` from going to the worker that sent ``welcome``:
    its ``refusal``, or its frame above the worker's ``max_frame`` (the words of
    ``frame_problem``), or None."""
    unfit = refusal(welcome, sample)
    if unfit is not None:
        return unfit
    return frame_problem(sample_frame_size(sample), welcome.max_frame)


PING_FRAME: Final[int] = len(encode(Ping(UINT64_MAX))) - HEADER.size
"""The body size of a ``ping`` frame with its id at its widest: what a sender checks against
the worker's ``max_frame`` before it knows the id."""


def ping_problem(welcome: Welcome) -> str | None:
    """What keeps a ``ping`` from going to the worker that sent ``welcome`` (its frame
    above the worker's ``max_frame``: a worker may announce one too small for any
    message, protocol.md §2), or None."""
    return frame_problem(PING_FRAME, welcome.max_frame)


PLAIN_SAMPLE_FRAME: Final[int] = sample_frame_size(
    Sample(UINT64_MAX, UINT64_MAX, UINT64_MAX, MAX_POINTS, "\U0010ffff" * MAX_TEXT)
)
"""The largest frame body of any plain sample (one stream, no ``group``) whose fields are
valid: every number at its widest and a kernel name of ``MAX_TEXT`` four-byte characters."""


def plain_verdict(welcome: Welcome, kernel: str, points: int) -> bool | None:
    """Whether the worker that sent ``welcome`` takes a plain sample (one stream, no
    ``group``; valid fields) of ``kernel`` and ``points``, when that is quick to say;
    None when only ``sending_problem`` can say (its ``max_frame`` is below
    ``PLAIN_SAMPLE_FRAME``). For a plain sample whose frame always fits, ``refusal``
    comes down to its kernel and its points; the tests hold the two equal."""
    if welcome.max_frame < PLAIN_SAMPLE_FRAME:
        return None
    return kernel in welcome.kernels and points <= welcome.max_points


def most_streams(welcome: Welcome, stream: int, points: int) -> int:
    """The most consecutive streams from ``stream``, ``points`` each, that one request to
    the worker that sent ``welcome`` may cover, counted one per group (``group`` 1): as
    many as ``refusal`` allows, at most ``MAX_GROUPS``; 0 when ``points`` are above its
    ``max_points``. On a connection of a version before ``RANGE_VERSION`` it is 1 (sent as
    a plain sample). The kernel and the frame are not considered (``sending_problem``)."""
    if points > welcome.max_points:
        return 0
    if welcome.version < RANGE_VERSION:
        return 1
    most = min(MAX_GROUPS, MAX_STREAMS, UINT64_MAX - stream + 1)
    return most if points == 0 else min(most, welcome.max_points // points)
