"""argparse value types shared by every subcommand: exact numbers, stated bounds, one
clear message for bad input.

It imports only the standard library (and, for ``--version``, ``mcpi_worker``'s
``__version__``) and sits at the bottom of the coordinator's layers, so that what reads
a number below ``cli`` reads it as the command does: the fake worker's command line
(``testing.fake_worker``) and ``launch.early``, which reads the estimate's command line
before anything heavy loads.

Every count is parsed exactly: ``1e6``, ``1_000_000`` and ``2.5e9`` are read as decimal
numbers (``decimal.Decimal``), never through a float, so ``--seed 9007199254740993e0``
is the seed typed, not the nearest double. Every count has an upper bound that says
what it protects (the protocol's limits, or what a machine can do), and the message
says the bound.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from mcpi_worker.quoting import quoted

T = TypeVar("T")

COUNT_EXAMPLES: Final[str] = "examples: 1000000, 1_000_000, 1e6"

_MAX_EXPONENT: Final[int] = 40
"""Beyond 10**40 every bound here is long exceeded; refusing before ``int()`` keeps
``1e999999999`` from building a billion-digit integer to compare."""


def parse_whole_number(text: str) -> int | None:
    """``text`` as an exact whole number, or None if it is not one.

    Accepts ``1000000``, ``1_000_000``, ``1e6``, ``2.5e9`` and ``-5``; refuses ``1.5``,
    ``inf``, ``nan`` and ``0x10``. Values too large for any bound come back as
    ``10**41``, which every caller refuses as above its limit.
    """
    cleaned = text.strip()
    if not cleaned or cleaned.startswith("_") or "__" in cleaned:
        return None
    if len(cleaned) <= _MAX_EXPONENT and cleaned.isascii() and cleaned.isdigit():
        return int(cleaned)  # plain digits (-n 1000), read without loading decimal
    import decimal  # a command line's first number in another spelling loads it

    try:
        value = decimal.Decimal(cleaned)  # exact: no binary rounding, accepts 1_000 and 1e6
    except decimal.InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value.adjusted() > _MAX_EXPONENT:
        huge: int = 10 ** (_MAX_EXPONENT + 1)
        return -huge if value < 0 else huge
    if value != value.to_integral_value():
        return None
    return int(value)


def count_type(
    low: int = 0, high: int | None = None, *, why: str = ""
) -> Callable[[str], int]:
    """An argparse ``type`` for a whole number from ``low`` to ``high`` (inclusive).

    ``why`` says what the upper bound protects, e.g. ``"the protocol's limit"``; it is
    named in the message for a value above it.
    """
    reason = f" ({why})" if why else ""

    def parse(text: str) -> int:
        number = parse_whole_number(text)
        if number is None:
            raise argparse.ArgumentTypeError(f"{quoted(text)} is not a whole number ({COUNT_EXAMPLES})")
        if number < low:
            if low == 0:
                raise argparse.ArgumentTypeError(f"{quoted(text)} is negative; give 0 or more")
            raise argparse.ArgumentTypeError(f"{quoted(text)} is too small; give at least {low:,}")
        if high is not None and number > high:
            raise argparse.ArgumentTypeError(
                f"{quoted(text)} is too large; the most is {high:,}{reason}"
            )
        return number

    parse.__name__ = "count"  # argparse names the type in some messages
    return parse


count = count_type(0)
"""Any whole number of 0 or more (for counts bounded elsewhere, or not at all)."""
positive_count = count_type(1)

SEED_LIMIT: Final[int] = (1 << 64) - 1
seed = count_type(0, SEED_LIMIT, why="a seed is below 2**64")
"""A seed of the random streams: 0 to 2**64 - 1, exactly as typed."""

stream = count_type(0, SEED_LIMIT, why="a stream number is below 2**64")


def number(
    unit: str = "", *, allow_zero: bool = False, unset: str = ""
) -> Callable[[str], float]:
    """An argparse type for a finite number (of ``unit``, named in its messages) that
    is positive or, with ``allow_zero``, not negative. ``unset`` says what leaving the
    option out does, for the message that refuses ``inf``."""
    of_unit = f" of {unit}" if unit else ""
    least = f"0 or more {unit}".rstrip() if allow_zero else f"a positive number{of_unit}"
    leave_out = f"; leave the option out for {unset}" if unset else ""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{quoted(text)} is not a number{of_unit}") from None
        if math.isnan(value):
            raise argparse.ArgumentTypeError(f"{quoted(text)} is not a number{of_unit}")
        if math.isinf(value) and value > 0:
            raise argparse.ArgumentTypeError(f"{quoted(text)} is not a finite number{of_unit}{leave_out}")
        if value < 0 or (value == 0 and not allow_zero) or math.isinf(value):
            raise argparse.ArgumentTypeError(f"{quoted(text)} must be {least}")
        return value

    parse.__name__ = unit or "number"
    return parse


seconds = number("seconds")
"""A positive, finite number of seconds."""


class EnvValue(str):
    """An option's value that came from an environment variable, not the command line:
    messages about it name the variable (the user did not type it here)."""

    variable: str

    def __new__(cls, value: str, variable: str) -> EnvValue:
        made = super().__new__(cls, value)
        made.variable = variable
        return made


ENVIRONMENT: Final[dict[str, str]] = {
    "MCPI_WORKER_CMD": "--worker-cmd",
    "MCPI_REMOTE_CMD": "--remote-cmd",
    "MCPI_LOG_LEVEL": "--log-level",
    "MCPI_LOG_FORMAT": "--log-format",
}
"""The options people set once, and the environment variables that set their default.
A value on the command line always wins."""


def env_default(variable: str, default: T) -> str | T:
    """The default of the option that ``variable`` sets: the variable's value if it is
    set and not empty (as an ``EnvValue``), else ``default``."""
    assert variable in ENVIRONMENT, variable
    value = os.environ.get(variable, "")
    return EnvValue(value, variable) if value else default


def named(value: object, option: str) -> str:
    """How a message names where ``value`` came from: the option, or the variable."""
    return value.variable if isinstance(value, EnvValue) else option


def add_version(parser: argparse.ArgumentParser) -> None:
    """``--version``, on every command: people type it wherever they are."""
    from mcpi_worker import __version__  # the distribution's one version (mcpi_coordinator's too)

    parser.add_argument("--version", action="version", version=f"mcpi {__version__}")


def picture_path_type(*suffixes: str) -> Callable[[str], Path]:
    """An argparse ``type`` for an output picture: one of ``suffixes``, in a directory that
    exists, not a directory itself and writable, so a typo fails at once with exit 2
    rather than after the work is done. (The write can still fail later, a full disk
    say: then the command exits 1 after printing its result.)"""
    expected = " or ".join(suffixes)

    def picture_path(text: str) -> Path:
        path = Path(text)
        if path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{quoted(text)} must end in {expected}")
        try:
            path.lstat()  # a name the system refuses (ENAMETOOLONG): is_dir() raises it, not answers
        except OSError as error:
            if error.errno == errno.ENAMETOOLONG:
                raise argparse.ArgumentTypeError(f"{quoted(text)}: {error.strerror}") from None
        if not path.parent.is_dir():
            raise argparse.ArgumentTypeError(
                f"{quoted(text)}: directory {quoted(path.parent)} does not exist"
            )
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{quoted(text)} is a directory")
        # The picture is written beside it and renamed over it: the directory is written.
        if not os.access(path.parent, os.W_OK):
            raise argparse.ArgumentTypeError(f"{quoted(text)} cannot be written here (permission denied)")
        return path

    return picture_path
