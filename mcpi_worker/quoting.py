"""A user's value quoted in a one-line error, shortened when it is long: the one home
for it, used by both commands (``mcpi`` imports it too: it imports nothing).

An error quotes what was typed, so that the person sees which value was refused. A
value can be as long as the system lets an argument or an environment variable be
(128 KiB on Linux): ``--points`` of a hundred thousand digits, a ``--host`` or a
``--worker-cmd`` pasted from the wrong buffer. Quoted whole, the "one line" was a
screenful or a log record of that size. Shortened, it keeps its start and its end (a
path's file name, a number's last digits) and says how long it was.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the worker's start)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Final

QUOTED_WHOLE: Final = 100
"""The longest value, in characters, that an error quotes whole."""
KEPT_HEAD: Final = 60
KEPT_TAIL: Final = 20
"""What a longer value keeps of its start and of its end, in characters."""


def quoted(value: object, *, quote: bool = True) -> str:
    """``value`` (``str`` of it, if not text) for an error: ``repr`` of it when it is at
    most ``QUOTED_WHOLE`` characters, else ``repr`` of its start, ``...`` and its end,
    followed by ``(N characters)``. ``quote=False``: the same without ``repr`` (a word
    an error lists as it was typed). Never raises."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= QUOTED_WHOLE:
        return repr(text) if quote else text
    cut = f"{text[:KEPT_HEAD]}...{text[-KEPT_TAIL:]}"
    return f"{cut!r} ({len(text):,} characters)" if quote else f"{cut} ({len(text):,} characters)"


def shortened_in(message: str, words: Iterable[str]) -> str:
    """``message`` with every long one of ``words`` (a command line) shortened where it
    appears, quoted (``'...'``) or bare, and the value of a long ``--option=value``.

    For the messages argparse writes itself, which quote a value whole ("invalid choice:
    ...", "ignored explicit argument ...", "unrecognized arguments: ..."): a parser's
    ``error`` passes its message through here with the words it parsed."""
    long: set[str] = set()
    for word in words:
        if len(word) > QUOTED_WHOLE:
            long.add(word)
            option, equals, value = word.partition("=")
            if equals and option.startswith("-") and len(value) > QUOTED_WHOLE:
                long.add(value)
    for word in sorted(long, key=len, reverse=True):  # a word before the value it ends with
        message = message.replace(repr(word), quoted(word)).replace(word, quoted(word, quote=False))
    return message
