"""``mcpi_worker.constants.MAX_POINTS`` as it was at 8f387ac, frozen with the rest of this
copy (a change to the live constant is a change of rule the differential tests must see)."""

from typing import Final

MAX_POINTS: Final[int] = 1 << 40
