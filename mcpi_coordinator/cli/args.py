"""argparse value types shared by every subcommand: one clear message for bad input."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def count(text: str) -> int:
    """A whole, non-negative count written as ``1000000``, ``1_000_000`` or ``1e6``."""
    cleaned = text.strip()
    try:
        if any(c in cleaned for c in "eE."):
            value = float(cleaned.replace("_", ""))
            if not math.isfinite(value) or value != int(value):
                raise ValueError
            number = int(value)
        else:
            number = int(cleaned)  # int() already accepts 1_000_000
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number (examples: 1000000, 1_000_000, 1e6)"
        ) from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; a count must be 0 or more")
    return number


def positive_count(text: str) -> int:
    number = count(text)
    if number == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return number


def seed(text: str) -> int:
    number = count(text)
    if number >= 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} is too large; a seed is below 2**64")
    return number


def number(unit: str = "", *, allow_zero: bool = False) -> Callable[[str], float]:
    """An argparse type for a finite number (of ``unit``, named in its messages) that
    is positive or, with ``allow_zero``, not negative."""
    of_unit = f" of {unit}" if unit else ""
    least = f"0 or more {unit}".rstrip() if allow_zero else f"a positive number{of_unit}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number{of_unit}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{text!r} must be {least}")
        return value

    parse.__name__ = unit or "number"  # argparse names the type in some messages
    return parse


seconds = number("seconds")
"""A positive, finite number of seconds."""
