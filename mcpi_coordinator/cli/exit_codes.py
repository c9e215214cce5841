"""Exit codes of the ``mcpi`` command (documented in docs/estimate.md and ``mcpi --help``)."""

import signal
from enum import IntEnum


class McpiExitCode(IntEnum):
    """How the ``mcpi`` command exits (the worker's own codes are
    ``mcpi_worker.protocol.ExitCode``)."""

    OK = 0
    FAILURE = 1
    """The run could not finish (workers kept failing, none could be reached, ...), or
    an output it was asked for (``--plot``) could not be written, or stdout would not take
    the output (a full disk, a descriptor closed when it started); one line says which.
    An estimate that was computed is printed first even then."""
    USAGE = 2
    """Bad arguments. Nothing was started."""
    HUNG_UP = 128 + signal.SIGHUP
    """129: the terminal went away (SIGHUP). Handled like Ctrl-C."""
    INTERRUPTED = 128 + signal.SIGINT
    """130: Ctrl-C (SIGINT), as shells report it. Every worker was stopped first."""
    TERMINATED = 128 + signal.SIGTERM
    """143: SIGTERM (``kill``, a job scheduler). Handled like Ctrl-C."""
    BROKEN_PIPE = 128 + signal.SIGPIPE
    """141: whoever read stdout stopped reading before the command wrote to it (``|
    true``), as a shell reports a tool that SIGPIPE ended. Nothing more is written, no
    traceback; every worker was stopped first. (``| head -1`` usually leaves after the
    result, written at once, is in the pipe: that is a 0.)"""

    @classmethod
    def for_signal(cls, signum: int) -> "McpiExitCode":
        """The conventional 128 + N of the signal that stopped us."""
        return cls(128 + signum)
