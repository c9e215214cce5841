"""The workload every approach runs: the same seeded chunks, the same kernel, the same workers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from mcpi_coordinator.pool.chunks import Chunk
from mcpi_coordinator.run.estimate import iter_chunks


@dataclass(frozen=True, slots=True)
class Workload:
    points: int
    seed: int
    kernel: str
    chunk_size: int
    workers: int
    worker_command: tuple[str, ...]
    """Starts one ``mcpi-worker``, for the approaches that talk to real workers."""

    def chunks(self) -> Iterator[Chunk]:
        """Exactly the chunks ``mcpi estimate`` would count for these settings."""
        return iter_chunks(self.seed, self.points, self.chunk_size, self.kernel)
