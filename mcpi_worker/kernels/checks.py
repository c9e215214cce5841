"""The check every load of the fused kernels passes before they count a point.

A loop that a compiler got wrong on some machine must never be used, so right after a
load (through numba or from our object cache) every compiled entry point counts a few
cases whose counts NumPy gave (kept in the tables below; a test holds them to
``numpy_impl``): the check needs no NumPy sampling, nor ``numpy.random``'s import, and
takes about a millisecond. Imported only when a load happens. The states of the table are
also the check of the compiled seeding of one stream (``drive.first_state``), by which a
worker counts a stream without NumPy.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Final

from mcpi_worker.kernels import drive
from mcpi_worker.kernels.choice import FusedUnavailable


@dataclass(frozen=True, slots=True)
class VerifySample:
    """One stream counted from its first point by the single-stream loop, in blocks."""

    seed: int
    stream: int
    state: tuple[int, int, int, int]
    """The SFC64 state (a, b, c, counter) NumPy seeds the stream with (``drive.initial_state``)."""
    points: int
    block_points: int
    inside: int
    """``numpy_impl.count(seed, stream, points)`` (a test holds the table to it)."""


@dataclass(frozen=True, slots=True)
class VerifyRange:
    """A range of streams counted by the range loop, seeding included."""

    seed: int
    first: int
    streams: int
    points: int
    points_per_call: int
    insides: tuple[int, ...]
    """``numpy_impl.count`` of each stream (a test holds the table to it)."""


VERIFY_SAMPLES: Final[tuple[VerifySample, ...]] = (
    # Across the loop's buffer and its blocks: the second block continues from the state
    # the first left, as a NumPy sample handed over is continued.
    VerifySample(12345, 0, (0xFD85BBFD996953E3, 0x89EF578576D7BEEA, 0xC4D910484E17FA07, 13), 100_003, 65_536, 78_380),
    VerifySample(
        2**64 - 1, 2**64 - 1, (0x249BC8F55B8C69C8, 0x8794F3C3F9E6A68F, 0x998C062715221905, 13), 4_099, 1_000, 3_216
    ),
)

VERIFY_RANGES: Final[tuple[VerifyRange, ...]] = (
    # One stream alone and three past stream 2**32 (stream by stream); a padded group of
    # lanes; the largest seed and the last streams there are (one narrow vector); a group
    # seeded, then stepped in many calls, up to the last stream (its padding wraps).
    VerifyRange(12345, 0, 1, 997, drive.LANES_POINTS_PER_CALL, (789,)),
    VerifyRange(
        12345, 0, 11, 997, drive.LANES_POINTS_PER_CALL, (789, 778, 767, 804, 790, 804, 798, 762, 783, 786, 796)
    ),
    VerifyRange(2**64 - 1, 2**32 - 1, 3, 997, drive.LANES_POINTS_PER_CALL, (783, 799, 792)),
    VerifyRange(2**64 - 1, 2**64 - 5, 5, 997, drive.LANES_POINTS_PER_CALL, (770, 786, 774, 755, 790)),
    VerifyRange(
        12345,
        2**64 - 20,
        20,
        1000,
        1000,
        (758, 788, 792, 794, 792, 762, 766, 773, 775, 768, 778, 779, 790, 791, 772, 789, 770, 790, 769, 791),
    ),
)


def verify(compiled: drive.Compiled) -> None:
    """Raise ``FusedUnavailable`` unless every compiled entry point gives NumPy's counts
    (``VERIFY_SAMPLES``, ``VERIFY_RANGES``)."""
    for sample in VERIFY_SAMPLES:
        seeded = tuple(int(word) for word in drive.first_state(compiled, sample.seed, sample.stream))
        if seeded != sample.state:
            raise FusedUnavailable(
                f"the compiled seeding gave stream {sample.stream} of seed {sample.seed} the state "
                f"{seeded}, where NumPy gives {sample.state}"
            )
        state = array("Q", sample.state)
        ours = drive.count_from(compiled, state, sample.points, block_points=sample.block_points)
        if ours != sample.inside:
            raise FusedUnavailable(
                f"the compiled loop counted {ours} inside for seed {sample.seed}, stream "
                f"{sample.stream}, {sample.points} points, where the numpy implementation "
                f"counts {sample.inside}"
            )
    for case in VERIFY_RANGES:
        counted = drive.count_streams(
            compiled, case.seed, case.first, case.streams, case.points, points_per_call=case.points_per_call
        )
        if tuple(counted) != case.insides:
            raise FusedUnavailable(
                f"the compiled range counted {counted} for seed {case.seed}, streams {case.first}.."
                f"{case.first + case.streams - 1}, where the numpy implementation counts {list(case.insides)}"
            )
