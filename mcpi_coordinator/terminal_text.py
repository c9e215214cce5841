"""Untrusted text made safe to write on a terminal: the one place that does it.

Text mcpi did not write itself reaches the operator's terminal from many places: a
worker's stderr and the tail of it quoted in an error, the ``worker`` and ``host``
fields of a welcome, values read from a checkpoint or a ``combine`` file. Any of them
may hold bytes a terminal obeys rather than shows: an escape sequence that sets the
window title, clears the screen or colours what follows, a carriage return that moves
back over the start of the line to print a forged ``mcpi estimate: error: ...`` over
it, a newline that starts a line of its own, a right-to-left override that shows a
command backwards. ``printable`` shows each such character escaped instead, in the
form the JSON log format (``--log-format json``) already writes (``\\u001b``, ``\\n``),
so the same line reads the same in both formats.

What is escaped: every character of the Unicode categories Cc (C0 controls, DEL and
the C1 controls, among them the 8-bit CSI ``\\x9b``), Cf (format characters: bidi
overrides and isolates, zero-width characters, the byte order mark), Zl and Zp (line
and paragraph separators) and Cs (lone surrogates, which ``surrogateescape`` makes of
undecodable bytes). Everything else, accents and CJK and emoji included, is shown as it
is. A backslash is not escaped: the result is meant for a person, not for parsing
back, and leaving it alone makes ``printable`` idempotent, so text escaped where it
was received (an error's stderr tail) and again where it is printed (``say``) is
escaped once.
"""

from __future__ import annotations

import unicodedata
from collections.abc import MutableMapping
from typing import Any, Final

__all__ = ["printable", "printable_fields"]

_ESCAPED_CATEGORIES: Final[frozenset[str]] = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

_SHORT_FORMS: Final[dict[str, str]] = {
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
"""JSON's own short escapes (RFC 8259 section 7); every other character is ``\\uXXXX``."""


def printable(value: object) -> str:
    """``value`` as text with nothing in it a terminal would act on (see the module).

    Non-``str`` values are turned into text with ``str`` first, so a field read from a
    file can be passed as it is. Never raises.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case, in C: no control, format or separator char
        return text
    return "".join(_escaped(char) for char in text)


def _escaped(char: str) -> str:
    if unicodedata.category(char) not in _ESCAPED_CATEGORIES:
        return char  # e.g. a no-break space: not "printable" to Python, harmless on a screen
    short = _SHORT_FORMS.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable_fields(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    """A structlog processor, for just before a console renderer: every key and text
    value of the event passed through ``printable``.

    A console renderer writes an event, a key and a text value as they are, and a
    worker chooses them (the pool relays its log lines with their event and fields).
    Other values are written with ``repr``, which escapes control characters already;
    a traceback keeps its line breaks, each line escaped. A JSON renderer needs none of
    this: ``json.dumps`` escapes every control character itself.
    """
    shown: dict[str, Any] = {}
    for key, value in event.items():
        if key in ("exception", "stack") and isinstance(value, str):
            shown[key] = "\n".join(printable(line) for line in value.split("\n"))
        else:
            shown[printable(key)] = printable(value) if isinstance(value, str) else value
    return shown


ASCII_ERRORS: Final[str] = "mcpi-ascii"
"""The codec error handler ``ascii_where_needed`` gives a stream that cannot encode mcpi's
text: its own characters in ASCII (``π`` as ``pi``, ``≈`` as ``~=``), any other one as
``\\uXXXX``."""

_ASCII_FORMS: Final[dict[str, str]] = {
    "π": "pi", "≈": "~=", "−": "-", "±": "+/-", "·": "*", "×": "x", "²": "^2", "⁴": "^4", "⁶": "^6",
    "⌊": "floor(", "⌋": ")", "→": "->", "—": "--", "–": "-", "≥": ">=", "≤": "<=", "½": "1/2", "µ": "u",
    "…": "...", "✓": "ok", "✗": "x", "━": "=", "ε": "eps", "§": "S", "\u0302": "^",
}  # fmt: skip
"""The characters mcpi writes itself (its tables, notes and help), in ASCII."""


def _ascii_forms(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start : error.end]
    return "".join(_ASCII_FORMS.get(char) or f"\\u{ord(char):04x}" for char in text), error.end


def ascii_where_needed(*streams: object) -> None:
    """Give each text stream whose encoding is not UTF-8 (``PYTHONIOENCODING=ascii``, a
    locale that is not installed, ``LANG=en_US`` of ISO 8859-1, a Japanese locale's
    EUC-JIS-2004, which has ``π`` but not ``µ``) the ``ASCII_ERRORS`` handler, so that mcpi's output is written in
    ASCII forms where it cannot be written as it is, instead of ending the command in a
    ``UnicodeEncodeError`` traceback as it printed its result. UTF-8 streams, and
    objects that are not text streams, are left as they are."""
    import codecs

    for stream in streams:
        encoding = getattr(stream, "encoding", None)
        reconfigure = getattr(stream, "reconfigure", None)
        if not isinstance(encoding, str) or reconfigure is None:
            continue
        try:
            if codecs.lookup(encoding).name == "utf-8":
                continue
        except LookupError:  # an encoding Python does not know: it would fail anyway
            continue
        # Any other encoding gets the handler, which acts only on what it cannot encode:
        # one that has π and ≈ may still lack µ (EUC-JIS-2004).
        try:
            codecs.lookup_error(ASCII_ERRORS)
        except LookupError:
            codecs.register_error(ASCII_ERRORS, _ascii_forms)
        reconfigure(errors=ASCII_ERRORS)
