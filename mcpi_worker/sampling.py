"""What one ``sample`` request counts: one stream, or (protocol version 2) a range of them.

A range of ``streams`` streams from ``stream`` is counted stream by stream with the same
kernel as a single-stream request would be, and the counts are summed per ``group`` of
streams: the result is bit-identical to one request per stream, summed, on any worker
(protocol.md §11). Used by the worker's compute threads and by the fake workers alike.
"""

from __future__ import annotations

from mcpi_worker.kernels import Cancelled, Kernel, StopCheck
from mcpi_worker.kernels.base import never
from mcpi_worker.protocol import Sample


def count_groups(kernel: Kernel, request: Sample, should_stop: StopCheck = never) -> list[int]:
    """The inside count of each group of ``request``'s streams, in order (one count for
    a plain sample). Raises ``Cancelled`` as soon as ``should_stop`` says so."""
    group = request.streams if request.group is None else request.group
    end = request.stream + request.streams
    counts = []
    for first in range(request.stream, end, group):
        total = 0
        for stream in range(first, min(first + group, end)):
            if should_stop():
                raise Cancelled
            total += kernel(request.seed, stream, request.points, should_stop)
        counts.append(total)
    return counts
