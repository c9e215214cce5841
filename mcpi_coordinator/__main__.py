"""``python -m mcpi_coordinator``: the ``mcpi`` command."""

import sys

from mcpi_coordinator.cli.main import main

sys.exit(main())
