"""mcpi-worker: a Monte Carlo sampling worker speaking the mcpi wire protocol on stdio.

Nothing in this package imports Trio: a worker starts in a fraction of a second and
can be embedded anywhere a process with stdin and stdout can run.

Importing the package itself costs nothing: ``__version__`` is looked up only when
asked for (``importlib.metadata`` takes ~25 ms to import), because ``mcpi_worker.boot``
must arm the parent-death backstop before anything slow runs.
"""

from __future__ import annotations

from functools import cache


@cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mcpi-trio")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
