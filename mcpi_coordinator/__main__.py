"""``python -m mcpi_coordinator``: the ``mcpi`` command."""

import sys

from mcpi_coordinator.cli.main import main

# Guarded: process pools (anyio.to_process, multiprocessing's spawn) import the main
# module of their parent in each worker, as ``__mp_main__``; it must not run the CLI.
if __name__ == "__main__":
    sys.exit(main())
