"""mcpi-worker: a Monte Carlo sampling worker speaking the mcpi wire protocol on stdio.

Nothing in this package imports Trio: a worker starts in a fraction of a second and
can be embedded anywhere a process with stdin and stdout can run.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mcpi-trio")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
