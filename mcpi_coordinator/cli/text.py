"""Human output: number words, and rows and tables laid out for where they are going.

On a terminal, output fits the terminal's width (long values wrap under themselves, a
table too wide becomes one block per row) and labels are bold, unless ``NO_COLOR`` is
set (https://no-color.org: no colour *and* no other styling). Anywhere else (a pipe, a
file) it is plain aligned text: no escape codes, no trailing spaces, and no line broken
at a guessed 80 columns, so ``grep`` and ``awk`` see whole lines.

Results go to stdout; everything else we print (progress, notes, warnings, errors) goes
to stderr, each line starting with the command's name.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Final, TextIO

from mcpi_coordinator.terminal_text import printable

GAP: Final[str] = "  "
NARROWEST_WRAP: Final[int] = 24
"""Below this many columns for a value, wrapping would make things worse: let the
terminal fold the line."""


# --------------------------------------------------------------------- number words


def plural(number: int, noun: str, plural_noun: str | None = None) -> str:
    """``1 chunk``, ``2 chunks``, ``1,000 runs``."""
    word = noun if number == 1 else (plural_noun or f"{noun}s")
    return f"{number:,} {word}"


def rate(per_second: float) -> str:
    """``419.3 M``, ``12.5 k``, ``2.5``: a rate with an SI prefix, never ``0.0 M``."""
    for threshold, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= threshold:
            return f"{per_second / threshold:,.1f} {prefix}"
    return f"{per_second:.3g}" if per_second > 0 else "0"


_COUNT_PREFIXES: Final = ((10**15, "P"), (10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k"))


def short_count(number: int) -> str:
    """``450M``, ``1.07G``, ``20G``: a count in three digits at most, for a narrow line.
    A count that would round up to four (``999,999``) takes the next prefix: ``1M``."""
    for index, (threshold, prefix) in enumerate(_COUNT_PREFIXES):
        if number >= threshold:
            scaled = number / threshold
            digits = f"{scaled:.3g}" if scaled < 100 else f"{scaled:.0f}"
            if float(digits) >= 1000 and index > 0:
                larger, larger_prefix = _COUNT_PREFIXES[index - 1]
                return f"{number / larger:.3g}{larger_prefix}"
            return f"{digits}{prefix}"
    return str(number)


def duration(seconds: float) -> str:
    """``0:07``, ``3:25``, ``1:02:03``, ``14 d 11:02``: a clock reading, days beyond 24 h."""
    if not math.isfinite(seconds):
        return "?"
    whole = max(0, round(seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days:,} d {hours:02d}:{minutes:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


# --------------------------------------------------------------------- the terminal


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def styling_allowed(stream: TextIO) -> bool:
    """Escape codes only for a terminal, and never with NO_COLOR set to anything."""
    return is_terminal(stream) and not os.environ.get("NO_COLOR")


def width_of(stream: TextIO) -> int | None:
    """The terminal's columns, or None when ``stream`` is not a terminal (no wrapping)."""
    if not is_terminal(stream):
        return None
    override = os.environ.get("COLUMNS", "")
    if override.isdigit() and int(override) > 0:
        return int(override)
    try:
        return os.get_terminal_size(stream.fileno()).columns or None
    except (OSError, ValueError):
        return shutil.get_terminal_size().columns


def bold(text: str, stream: TextIO) -> str:
    return f"\x1b[1m{text}\x1b[0m" if styling_allowed(stream) else text


# --------------------------------------------------------------------- layouts


def rows_text(rows: Sequence[tuple[str, str]], stream: TextIO | None = None) -> str:
    """``label  value`` lines, labels in one column; on a terminal, a long value wraps
    under itself rather than under the label."""
    out = sys.stdout if stream is None else stream
    width = width_of(out)
    label_width = max((len(label) for label, _ in rows), default=0)
    indent = " " * (label_width + len(GAP))
    lines = []
    for label, raw_value in rows:
        value = printable(raw_value)  # a host name from a welcome, a field from a file
        room = None if width is None else width - len(indent)
        if room is not None and room >= NARROWEST_WRAP and len(value) > room:
            parts = textwrap.wrap(value, room, break_on_hyphens=False) or [""]
        else:
            parts = [value]
        head = bold(label.ljust(label_width), out)
        lines.append(f"{head}{GAP}{parts[0]}".rstrip())
        lines.extend(f"{indent}{part}".rstrip() for part in parts[1:])
    return "\n".join(lines)


def table_text(
    headings: Sequence[str],
    rows: Sequence[Sequence[str]],
    right_aligned: Sequence[bool],
    stream: TextIO | None = None,
) -> str:
    """An aligned table: columns two spaces apart, numbers right-aligned. On a terminal
    too narrow for it, each row becomes a block of ``heading  value`` lines instead, so
    nothing is cut to ``appro…``."""
    out = sys.stdout if stream is None else stream
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headings)]

    def line(cells: Sequence[str], style: bool = False) -> str:
        padded = [
            cell.rjust(widths[i]) if right_aligned[i] else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        text = GAP.join(padded).rstrip()
        return bold(text, out) if style else text

    total = sum(widths) + len(GAP) * (len(widths) - 1)
    width = width_of(out)
    if width is None or total <= width:
        return "\n".join([line(headings, style=True), *(line(row) for row in rows)])
    blocks = []
    for row in rows:
        body = rows_text(list(zip(headings[1:], row[1:], strict=True)), out)
        blocks.append(bold(row[0], out) + "\n" + textwrap.indent(body, GAP))
    return "\n".join(blocks)


def say(prog: str, message: str) -> None:
    """One line on stderr from ``prog``: a note, a warning, an error, a file written.

    Always one line, and only characters mcpi chose to be there: an error's message may
    quote a worker's stderr or welcome, or a file's contents (``printable``)."""
    try:
        print(f"{prog}: {printable(message)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed: the exit code still says it
        pass
