"""``python -m mcpi_worker``: the same as the ``mcpi-worker`` command."""

import sys

from mcpi_worker.boot import main

sys.exit(main())
