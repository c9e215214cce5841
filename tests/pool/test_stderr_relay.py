"""``connection.stderr_relay.StderrRelay``: a worker's stderr bytes in, log records and a
short tail out, with bounded memory and the worker's text treated as data. End to end
(real workers, the CLI's rendering) in tests/pool/test_hostile_stderr.py; here the
relay's own contract, fed bytes directly."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from structlog.processors import NAME_TO_LEVEL

from mcpi_coordinator.connection.stderr_relay import MAX_LINE, TAIL_LINE_CHARS, TAIL_LINES, StderrRelay


@dataclass
class RecordingLogger:
    """The part of a structlog logger the relay calls, keeping each call."""

    records: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)

    def info(self, event: str, **fields: Any) -> None:
        self.records.append((NAME_TO_LEVEL["info"], event, fields))

    def log(self, level: int, event: str, **fields: Any) -> None:
        self.records.append((level, event, fields))

    def lines(self) -> list[str]:
        """The text of each plain line logged, in order."""
        return [fields["line"] for _, event, fields in self.records if event == "worker_stderr"]


def relay() -> tuple[StderrRelay, RecordingLogger]:
    logger = RecordingLogger()
    return StderrRelay(logger, name="worker 3"), logger


def test_lines_split_across_reads_are_joined_and_blank_ones_skipped() -> None:
    stderr, logger = relay()
    for piece in (b"first li", b"ne\r\n\n  \nsec", b"ond\n", b"unfinished"):
        stderr.feed(piece)
    assert logger.lines() == ["first line", "second"]
    stderr.feed_eof()
    assert logger.lines() == ["first line", "second", "unfinished"]
    assert stderr.bytes_seen == len(b"first line\r\n\n  \nsecond\nunfinished")


@pytest.mark.parametrize("reads", [1, 7, 1000], ids=["one-read", "seven-reads", "1000-reads"])
def test_a_line_longer_than_the_limit_comes_in_pieces_of_at_most_the_limit(reads: int) -> None:
    line = bytes(range(32, 127)) * (3 * MAX_LINE // 95 + 1)  # over three times the limit
    stderr, logger = relay()
    size = -(-len(line) // reads)
    for start in range(0, len(line), size):
        stderr.feed(line[start : start + size])
    stderr.feed(b"\nnext\n")
    pieces = logger.lines()
    assert pieces[-1] == "next"
    assert "".join(pieces[:-1]).encode() == line  # nothing lost, nothing added
    assert all(len(piece.encode()) <= MAX_LINE for piece in pieces)


def test_a_flood_without_newlines_keeps_at_most_one_piece() -> None:
    """100 times the limit, never a newline: each piece goes as soon as it is whole."""
    stderr, logger = relay()
    for _ in range(100):
        stderr.feed(b"x" * MAX_LINE)
    assert len(logger.lines()) == 99  # the 100th may still grow: it waits, at most MAX_LINE bytes
    stderr.feed_eof()
    assert len(logger.lines()) == 100


@pytest.mark.parametrize("character", ["é", "€", "𝜋"], ids=["2-bytes", "3-bytes", "4-bytes"])
@pytest.mark.parametrize("whole", [True, False], ids=["whole-line", "growing-line"])
def test_a_long_line_is_never_cut_inside_a_character(character: str, whole: bool) -> None:
    """Pieces were cut every MAX_LINE bytes, wherever that fell: a character of two to
    four bytes across a cut came out as replacement characters on both sides. Found by
    this test; a cut now steps back to the character's first byte."""
    text = "π " + character * (2 * MAX_LINE)
    stderr, logger = relay()
    stderr.feed(text.encode() + (b"\n" if whole else b""))
    stderr.feed_eof()
    pieces = logger.lines()
    assert len(pieces) > 1
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == text
    assert all(len(piece.encode()) <= MAX_LINE for piece in pieces)


def test_invalid_utf_8_is_replaced_not_raised() -> None:
    stderr, logger = relay()
    stderr.feed(b"bad \xff\xfe bytes \xc3\n\xe2\x82\n")
    assert logger.lines() == ["bad \ufffd\ufffd bytes \ufffd", "\ufffd"]
    assert stderr.tail() == "bad \ufffd\ufffd bytes \ufffd | \ufffd"


def test_a_json_record_is_relayed_under_the_worker_s_name_with_its_keys_as_data() -> None:
    """Keys that are parameters of the logging call (``self``, ``exc_info``) stay data;
    the record's time and pid are the coordinator's own."""
    stderr, logger = relay()
    record = {"event": "cache_miss", "level": "warning", "self": 1, "exc_info": True,
              "timestamp": "now", "pid": 7, "path": "/tmp/x"}  # fmt: skip
    stderr.feed(json.dumps(record).encode() + b"\n")
    assert logger.records == [
        (NAME_TO_LEVEL["warning"], "worker 3: cache_miss", {"fields": {"self": 1, "exc_info": True, "path": "/tmp/x"}})
    ]
    assert stderr.tail() == "warning: cache_miss self=1 exc_info=True path=/tmp/x"


@pytest.mark.parametrize("claimed", ["error", "critical", "CRITICAL"])
def test_a_worker_cannot_claim_more_than_a_warning(claimed: str) -> None:
    stderr, logger = relay()
    stderr.feed(json.dumps({"event": "boom", "level": claimed}).encode() + b"\n")
    [(level, event, fields)] = logger.records
    assert (level, event) == (NAME_TO_LEVEL["warning"], "worker 3: boom")
    assert fields == {"fields": {"level": claimed.lower()}}  # what it said, kept as data


@pytest.mark.parametrize(
    "line",
    ['{"event": "x"', "[1, 2]", '"text"', "{" * 100_000 + "}" * 100_000, '{"level": "warning"} trailing'],
    ids=["cut-short", "a-list", "a-string", "nested-deep", "trailing-text"],
)
def test_what_is_not_a_json_object_is_a_plain_line(line: str) -> None:
    stderr, logger = relay()
    stderr.feed(line.encode()[: MAX_LINE - 1] + b"\n")
    assert [event for _, event, _ in logger.records] == ["worker_stderr"]


def test_a_record_without_an_event_or_level_is_an_info_named_worker_log() -> None:
    stderr, logger = relay()
    stderr.feed(b'{"level": "nonsense", "k": 1}\n{}\n')
    assert logger.records == [
        (NAME_TO_LEVEL["info"], "worker 3: worker_log", {"fields": {"k": 1}}),
        (NAME_TO_LEVEL["info"], "worker 3: worker_log", {}),
    ]


def test_the_tail_is_the_last_lines_short_and_escaped_on_one_line() -> None:
    stderr, logger = relay()
    for number in range(TAIL_LINES + 5):
        stderr.feed(f"line {number}\n".encode())
    stderr.feed(b"\x1b[31mred\x07 " + b"y" * (2 * TAIL_LINE_CHARS) + b"\n")
    tail = stderr.tail().split(" | ")
    assert len(tail) == TAIL_LINES
    assert tail[0] == "line 6"
    assert "\x1b" not in tail[-1] and "\x07" not in tail[-1]
    assert len(tail[-1]) == TAIL_LINE_CHARS and tail[-1].endswith("…")
    assert "\x1b" in logger.lines()[-1]  # the log record keeps the text; its renderer escapes it
