"""Exit codes of the ``mcpi`` command (documented in the README)."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    """The run could not finish: workers kept failing, none could be reached, ..."""
    USAGE = 2
    """Bad arguments. Nothing was started."""
    INTERRUPTED = 130
    """Ctrl-C (SIGINT): 128 + 2, as shells report it. Every worker was stopped."""
