"""A worker's stderr: split into lines, re-emitted as coordinator logs, tail kept.

A worker's stderr must always be drained, or a chatty worker blocks on a full pipe
and stops answering (anyio's deadlock advisory). Draining must also stay cheap and
bounded: a worker that floods 100 MB of stderr, with or without newlines, must not
grow the coordinator's memory or starve its other tasks. So:

- lines longer than ``MAX_LINE`` bytes are cut into pieces (memory is bounded by
  ``MAX_LINE`` whatever the input);
- a JSON object line (what ``mcpi-worker`` writes) is re-emitted through structlog at
  its own level with the worker's slot and pid bound; any other line is emitted as
  text at ``info``, which the CLI's default ``warning`` level filters out cheaply;
- the last ``TAIL_LINES`` lines are kept for error messages ("...and its stderr said").
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Final

from structlog.processors import NAME_TO_LEVEL

MAX_LINE: Final[int] = 8192
"""Longest stderr line handled as one; longer input is split (flood protection)."""

TAIL_LINES: Final[int] = 12
TAIL_LINE_CHARS: Final[int] = 240

_RESERVED: Final[frozenset[str]] = frozenset({"event", "level", "worker", "slot"})


class StderrRelay:
    """Feed it a worker's stderr bytes; it logs each line and keeps a short tail."""

    def __init__(self, logger: Any) -> None:
        self._log = logger
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
        if len(self._partial) > MAX_LINE:
            self._emit_long(bytes(self._partial))
            self._partial.clear()

    def feed_eof(self) -> None:
        if self._partial:
            self._emit_long(bytes(self._partial))
            self._partial.clear()

    def tail(self) -> str:
        """The last lines, joined with `` | `` so that an error message stays one line."""
        return " | ".join(self._tail)

    def _emit_long(self, line: bytes | bytearray) -> None:
        for start in range(0, max(len(line), 1), MAX_LINE):
            self._emit(bytes(line[start : start + MAX_LINE]))

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not text.strip():
            return
        record = _json_record(text)
        if record is None:
            self._tail.append(_shorten(text))
            self._log.info("worker_stderr", line=text)
            return
        event = str(record.pop("event", "worker_log"))
        level_name = str(record.pop("level", "info")).lower()
        fields = {k: v for k, v in record.items() if k not in _RESERVED}
        self._tail.append(_shorten(f"{level_name}: {event}" + _brief(fields)))
        self._log.log(NAME_TO_LEVEL.get(level_name, NAME_TO_LEVEL["info"]), event, **fields)


def _json_record(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _brief(fields: dict[str, Any]) -> str:
    shown = {k: v for k, v in fields.items() if k not in ("timestamp", "pid")}
    return "".join(f" {k}={v}" for k, v in shown.items())


def _shorten(text: str) -> str:
    return text if len(text) <= TAIL_LINE_CHARS else text[: TAIL_LINE_CHARS - 1] + "…"
