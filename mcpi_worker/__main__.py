"""``python -m mcpi_worker``: the same as the ``mcpi-worker`` command."""

import sys

from mcpi_worker.main import main

sys.exit(main())
