"""What one ``sample`` request counts: one stream, or (protocol version 2) a range of them.

A range of ``streams`` streams from ``stream`` is counted stream by stream with the same
kernel as a single-stream request would be, and the counts are summed per ``group`` of
streams: the result is bit-identical to one request per stream, summed, on any worker
(protocol.md §11). Used by the worker's compute threads and by the fake workers alike.
"""

from __future__ import annotations

from mcpi_worker.kernels import Cancelled, Kernel, StopCheck
from mcpi_worker.kernels.base import StreamsCounter, never
from mcpi_worker.protocol import Sample


def count_groups(kernel: Kernel, request: Sample, should_stop: StopCheck = never) -> list[int]:
    """The inside count of each group of ``request``'s streams, in order (one count for
    a plain sample). Raises ``Cancelled`` as soon as ``should_stop`` says so.

    A kernel with a ``count_streams`` method (the ``numpy`` kernel: one compiled call
    for many short streams once its fused implementation is loaded) counts a range its
    own way; any other is called stream by stream.
    """
    if request.streams == 1:
        return [kernel(request.seed, request.stream, request.points, should_stop)]
    count_streams: StreamsCounter | None = getattr(kernel, "count_streams", None)
    if count_streams is not None:
        singles = count_streams(request.seed, request.stream, request.streams, request.points, should_stop)
    else:
        singles = []
        for stream in range(request.stream, request.stream + request.streams):
            if should_stop():
                raise Cancelled
            singles.append(kernel(request.seed, stream, request.points, should_stop))
    group = request.streams if request.group is None else request.group
    return [sum(singles[i : i + group]) for i in range(0, request.streams, group)]
