"""``python -m mcpi_coordinator``: the ``mcpi`` command."""

import sys

# Guarded: process pools (anyio.to_process, multiprocessing's spawn) import the main
# module of their parent in each worker, as ``__mp_main__``; it must not run the CLI,
# nor hold their Ctrl-C (``cli.boot`` does, as it is imported).
if __name__ == "__main__":
    from mcpi_coordinator.cli.boot import main

    sys.exit(main())
