"""mcpi-worker: a Monte Carlo sampling worker speaking the mcpi wire protocol on stdio.

Nothing in this package imports Trio: a worker starts in a fraction of a second and
can be embedded anywhere a process with stdin and stdout can run.

Importing the package itself costs nothing: ``__version__`` is written here, once for
the whole distribution (pyproject.toml reads it from this line), rather than looked up
with ``importlib.metadata``, whose import is slow: ``mcpi_worker.boot`` must arm the
parent-death backstop before anything slow runs, and ``mcpi --version`` must answer in
the time a bare interpreter takes to start.
"""

from __future__ import annotations

__version__ = "0.1.0"
