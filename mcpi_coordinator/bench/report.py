"""From measurements to the figures ``mcpi bench approaches`` shows: one row per approach."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from mcpi_coordinator.bench.measure import Measurement
from mcpi_coordinator.bench.workload import Workload

BASELINE = "sequential"


@dataclass(frozen=True, slots=True)
class ApproachRow:
    approach: str
    wall_s: float
    """Median over the repeated runs."""
    points_per_s: float
    speedup: float | None
    """``sequential``'s wall over this one's; None when sequential was not run."""
    inside: int
    pi: float
    startup_s: float | None
    """Starting a persistent pool, before its clock runs; None for approaches that
    start nothing ahead (their start-ups are inside ``wall_s``)."""


@dataclass(frozen=True, slots=True)
class Disagreement:
    """Approaches (or runs of one approach) counted different ``inside`` for the same chunks."""

    counts: dict[str, list[int]]

    def __str__(self) -> str:
        listed = "; ".join(
            f"{name} counted {', '.join(map(str, sorted(values)))}"
            for name, values in self.counts.items()
        )
        return f"approaches disagree on the same chunks: {listed}"


def rows(workload: Workload, measurements: Sequence[Measurement]) -> list[ApproachRow]:
    baseline = next((m.wall_s for m in measurements if m.approach == BASELINE), None)
    result = []
    for m in measurements:
        inside = min(m.counts)  # every run agrees unless disagreement() says otherwise
        result.append(
            ApproachRow(
                approach=m.approach,
                wall_s=m.wall_s,
                points_per_s=workload.points / m.wall_s,
                speedup=baseline / m.wall_s if baseline is not None else None,
                inside=inside,
                pi=4 * inside / workload.points,
                startup_s=m.startup_s,
            )
        )
    return result


def disagreement(measurements: Sequence[Measurement]) -> Disagreement | None:
    """None when every run of every approach counted the same ``inside``."""
    if len(frozenset().union(*(m.counts for m in measurements))) <= 1:
        return None
    return Disagreement({m.approach: sorted(m.counts) for m in measurements})


def to_json(workload: Workload, table: Sequence[ApproachRow]) -> dict[str, Any]:
    return {
        "points": workload.points,
        "chunk_size": workload.chunk_size,
        "workers": workload.workers,
        "kernel": workload.kernel,
        "seed": workload.seed,
        "results": [asdict(row) for row in table],
    }
