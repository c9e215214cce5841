"""A progress bar on stderr, shown only when stderr is a terminal.

Scripts reading ``--json`` on stdout, and logs redirected to a file, never see it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_wanted() -> bool:
    return sys.stderr.isatty()


@contextmanager
def points_progress(total_points: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(points)``; draws a bar for ``total_points`` when ``enabled``."""
    if not enabled:
        yield lambda _points: None
        return
    progress = Progress(
        TextColumn("sampling"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        redirect_stderr=True,
        redirect_stdout=False,
    )
    with progress:
        task = progress.add_task("sampling", total=total_points)
        yield lambda points: progress.advance(task, points)
