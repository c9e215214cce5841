"""The mcpi coordinator: a persistent pool of mcpi-worker processes driven from Trio."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mcpi")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
