"""A worker's stderr: split into lines, re-emitted as coordinator logs, tail kept.

A worker's stderr must always be drained, or a chatty worker blocks on a full pipe
and stops answering (anyio's deadlock advisory). Draining must also stay cheap and
bounded: a worker that floods 100 MB of stderr, with or without newlines, must not
grow the coordinator's memory or starve its other tasks. So:

- lines longer than ``MAX_LINE`` bytes are cut into pieces, never inside a UTF-8
  character (memory is bounded by ``MAX_LINE`` whatever the input);
- a JSON object line (what ``mcpi-worker`` writes) is re-emitted through structlog as
  ``<name>: <its event>`` (``worker 3: fused_kernel_cache_unavailable``), its other keys
  under one ``fields`` key; any other line is emitted as ``worker_stderr`` with the text
  as its ``line``, at ``info``, which the CLI's default ``warning`` level filters out
  cheaply;
- the last ``TAIL_LINES`` lines are kept for error messages ("...and its stderr said").

A worker is not trusted (any ssh host is one), so what it writes is data, never
instructions to the coordinator:

- its keys are never keyword arguments: ``{"event": "x", "self": 1}`` or a key named
  ``exc_info`` or ``_record`` would otherwise clash with the logging call's parameters
  (a ``TypeError`` out of the pool) or steer the program's structlog processors;
- the level it claims is capped at ``MOST_SEVERE_RELAYED`` (warning): the coordinator,
  not the worker, decides what is an error, so ``mcpi estimate -q`` (errors only) shows
  no worker line, and a worker's ``critical`` is kept as ``fields["level"]``;
- the event carries the worker's name in front, so a line a worker writes cannot pass
  for one of the coordinator's own;
- its text reaches the operator's terminal only through ``terminal_text.printable``:
  the tail here, and the console log renderer (``cli/logging.py``) for what is logged.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Final

from mcpi_coordinator.terminal_text import printable
from mcpi_worker.logs import NAME_TO_LEVEL  # structlog's names, without loading structlog

MAX_LINE: Final[int] = 8192
"""Longest stderr line handled as one; longer input is split (flood protection)."""

TAIL_LINES: Final[int] = 12
TAIL_LINE_CHARS: Final[int] = 240

MOST_SEVERE_RELAYED: Final[str] = "warning"
"""The most severe level a worker's line is re-emitted at, whatever level it claims."""

_DROPPED: Final[frozenset[str]] = frozenset({"timestamp", "pid"})
"""Keys of a worker's record the coordinator's own record already carries (its time;
the worker's pid is bound to the logger)."""


class StderrRelay:
    """Feed it a worker's stderr bytes; it logs each line and keeps a short tail.

    ``name`` (``worker 3``) is put in front of every event the worker logs.
    """

    def __init__(self, logger: Any, name: str = "worker") -> None:
        self._log = logger
        self._name = name
        self._partial = bytearray()
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.bytes_seen = 0

    def feed(self, data: bytes | bytearray) -> None:
        self.bytes_seen += len(data)
        self._partial += data
        if b"\n" not in data and len(self._partial) <= MAX_LINE:
            return
        *lines, rest = self._partial.split(b"\n")
        for line in lines:
            self._emit_long(line)
        self._partial = bytearray(rest)
        # A line still growing past MAX_LINE: its whole pieces go now, the rest waits
        # for more (a piece cut between two reads would break a character in two).
        while len(self._partial) > MAX_LINE:
            cut = _piece_end(self._partial, 0)
            self._emit(bytes(self._partial[:cut]))
            del self._partial[:cut]

    def feed_eof(self) -> None:
        if self._partial:
            self._emit_long(bytes(self._partial))
            self._partial.clear()

    def tail(self) -> str:
        """The last lines, joined with `` | `` so that an error message stays one line;
        control characters shown escaped (``printable``)."""
        return " | ".join(self._tail)

    def _emit_long(self, line: bytes | bytearray) -> None:
        start = 0
        while True:
            end = _piece_end(line, start)
            self._emit(bytes(line[start:end]))
            if end >= len(line):
                return
            start = end

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not text.strip():
            return
        record = _json_record(text)
        if record is None:
            self._tail.append(_shorten(printable(text)))
            self._log.info("worker_stderr", line=text)
            return
        said = record.pop("event", "worker_log")
        claimed = str(record.pop("level", "info")).lower()
        level = NAME_TO_LEVEL.get(claimed, NAME_TO_LEVEL["info"])
        if level > NAME_TO_LEVEL[MOST_SEVERE_RELAYED]:
            level = NAME_TO_LEVEL[MOST_SEVERE_RELAYED]
            record["level"] = claimed  # what the worker said, kept as data
        fields = {key: value for key, value in record.items() if key not in _DROPPED}
        self._tail.append(_shorten(printable(f"{claimed}: {said}" + _brief(fields))))
        if fields:
            self._log.log(level, f"{self._name}: {said}", fields=fields)
        else:
            self._log.log(level, f"{self._name}: {said}")


_CONTINUATION_MASK: Final = 0xC0
_CONTINUATION: Final = 0x80
"""A UTF-8 continuation byte is 0b10xxxxxx: it never starts a character."""


def _piece_end(data: bytes | bytearray, start: int) -> int:
    """Where the piece of ``data`` from ``start`` ends: after at most MAX_LINE bytes, and
    not inside a UTF-8 character (a character has at most three continuation bytes;
    input that is not UTF-8 may be cut anywhere), so that no piece of a long line
    decodes to a replacement character that was not in the line."""
    end = start + MAX_LINE
    if end >= len(data):
        return len(data)
    for back in range(4):  # the byte at the cut, and up to three before it
        if data[end - back] & _CONTINUATION_MASK != _CONTINUATION:
            return end - back
    return end


def _json_record(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # a line nested thousands deep is no log record
        return None
    return record if isinstance(record, dict) else None


def _brief(fields: dict[str, Any]) -> str:
    return "".join(f" {key}={value}" for key, value in fields.items() if key != "level")


def _shorten(text: str) -> str:
    return text if len(text) <= TAIL_LINE_CHARS else text[: TAIL_LINE_CHARS - 1] + "…"
