"""The statistics of a count, and the rule that stops a run on it.

Each point lands inside the quarter circle with probability p = π/4, so
inside ~ Binomial(n, p), π̂ = 4·inside/n, its standard error is 4·sqrt(p̂(1 − p̂)/n),
and the 95% interval is π̂ ± 1.96·SE.

**Why stopping on the half-width is honest here.** Stopping at the first n whose
interval is narrow enough is optional stopping: in general its intervals cover only
asymptotically (Chow–Robbins), because the rule can favour the samples that happen
to look precise. Here the half-width is 1.96·4·sqrt(p̂(1 − p̂)/n), and p̂ moves by
O(1/sqrt(n)) around π/4 where p(1 − p) is flat to first order, so the half-width is
very nearly a function of n alone: the rule stops every run at almost the same n
(over 1000 seeds at ε = 5e-3 with chunks of 1e4 points, all at the same 42 chunks;
``tests/run/test_stopping.py``), which is a fixed-n plan in all but name, and a fixed-n
interval covers π 95% of the time. The test measures it: 93.9% of those 1000.

One case would break this: tiny samples, where p̂ can be 0 or 1 and the standard
error 0, so 10 points all inside would "reach" any target with π̂ = 4.
``MIN_EACH_SIDE`` keeps the rule from stopping before the normal approximation
means anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

Z_95: Final[float] = 1.959963984540054
"""The standard normal quantile for a two-sided 95% interval."""

MIN_EACH_SIDE: Final[int] = 10
"""The stopping rule waits for this many points inside and outside the arc: the usual
n·p ≥ 10 and n·(1 − p) ≥ 10 for a binomial's normal approximation."""


@dataclass(frozen=True, slots=True)
class PiStatistics:
    """An estimate of π from a count, with its standard error and 95% interval."""

    pi: float
    std_error: float
    ci95: tuple[float, float]

    @property
    def half_width(self) -> float:
        return (self.ci95[1] - self.ci95[0]) / 2

    @property
    def error(self) -> float:
        """The estimate minus ``math.pi``: what every report calls its error."""
        return self.pi - math.pi


def pi_statistics(inside: int, points: int, z: float = Z_95) -> PiStatistics:
    """π̂ = 4·inside/points with its binomial standard error and ``z`` interval (95%).
    Raises ``ValueError`` when ``points`` is 0 or less."""
    if points <= 0:
        raise ValueError("no points: nothing to estimate")
    p = inside / points
    pi = 4.0 * p
    std_error = 4.0 * math.sqrt(p * (1.0 - p) / points)
    half = z * std_error
    return PiStatistics(pi=pi, std_error=std_error, ci95=(pi - half, pi + half))


def points_to_reach(target_error: float, z: float = Z_95) -> int:
    """The most points ``StopRule(target_error)`` can need: p̂(1 − p̂) is at most 1/4,
    so the half-width z·4·sqrt(p̂(1 − p̂)/n) is at most 2z/sqrt(n), which is at most
    ``target_error`` from n = (2z/target_error)² on, whatever the points drawn. (A run
    stops near (z·4·sqrt(p(1 − p))/target_error)², about 0.67 of it: p̂ ≈ π/4.)
    Raises ``ValueError`` unless ``target_error`` is positive."""
    if not target_error > 0:
        raise ValueError(f"target_error must be positive, not {target_error}")
    return math.ceil((2 * z / target_error) ** 2)


@dataclass(frozen=True, slots=True)
class StopRule:
    """``--target-error``: stop once the 95% interval's half-width is at most
    ``target_error`` (and ``MIN_EACH_SIDE`` holds). ``None`` never stops."""

    target_error: float | None = None
    z: float = Z_95

    def reached(self, inside: int, points: int) -> bool:
        if self.target_error is None or points == 0:
            return False
        if inside < MIN_EACH_SIDE or points - inside < MIN_EACH_SIDE:
            return False
        return pi_statistics(inside, points, self.z).half_width <= self.target_error
