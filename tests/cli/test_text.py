"""``cli.text``: number words, and rows and tables laid out for a terminal or for a pipe.
The commands' output is checked end to end elsewhere (test_cli_terminal.py,
test_terminal_text.py); here each function's contract, with its stream given."""

from __future__ import annotations

import io
import math
from contextlib import redirect_stderr
from typing import Any

import pytest

from mcpi_coordinator.cli import text


class Terminal(io.StringIO):
    """A stream that says it is a terminal and has no descriptor (its width comes from
    COLUMNS, as the functions read it first)."""

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """A 40-column terminal with styling allowed (what the environment says decides)."""
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NO_COLOR", raising=False)
    return Terminal()


# ----------------------------------------------------------------------- number words


def test_plural() -> None:
    assert text.plural(1, "chunk") == "1 chunk"
    assert text.plural(0, "chunk") == "0 chunks"
    assert text.plural(1_000, "run") == "1,000 runs"
    assert text.plural(2, "process", "processes") == "2 processes"


@pytest.mark.parametrize(
    ("per_second", "words"),
    [(419.3e6, "419.3 M"), (12_500, "12.5 k"), (2.5, "2.5"), (999.9, "1e+03"), (0, "0"), (-1, "0"), (1e13, "10.0 T")],
)
def test_rate(per_second: float, words: str) -> None:
    assert text.rate(per_second) == words


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (0, "0"),
        (999, "999"),
        (450_000_000, "450M"),
        (1_070_000_000, "1.07G"),
        (20_000_000_000, "20G"),
        (999_999, "1M"),
        (999_500, "1M"),
        (999_999_999, "1G"),
        (999_499, "999k"),
        (99_999, "100k"),
        (999_999_999_999_999_999, "1000P"),
    ],
)
def test_short_count_is_three_digits(number: int, words: str) -> None:
    """A count just under a prefix's step rounded up to four digits (``999_999`` was
    ``1000k``, one column more than the narrow line has room for). Found by this test:
    it now takes the next prefix. Past the largest prefix there is none to take."""
    assert text.short_count(number) == words


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(7, "0:07"), (205, "3:25"), (3723, "1:02:03"), (14 * 86_400 + 11 * 3600 + 120, "14 d 11:02"),
     (59.6, "1:00"), (-3, "0:00"), (math.inf, "?"), (math.nan, "?")],
)  # fmt: skip
def test_duration(seconds: float, words: str) -> None:
    assert text.duration(seconds) == words


# ----------------------------------------------------------------------- the terminal


def test_a_pipe_is_no_terminal_and_gets_no_width_and_no_styling() -> None:
    pipe = io.StringIO()
    assert not text.is_terminal(pipe)
    assert text.width_of(pipe) is None
    assert text.bold("x", pipe) == "x"


def test_a_closed_stream_is_no_terminal() -> None:
    closed = io.StringIO()
    closed.close()
    assert not text.is_terminal(closed)


def test_a_dumb_terminal_is_none_and_no_color_turns_styling_off(
    terminal: Terminal, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert text.bold("x", terminal) == "\x1b[1mx\x1b[0m"
    monkeypatch.setenv("NO_COLOR", "")  # set but empty: colour allowed (no-color.org)
    assert text.styling_allowed(terminal)
    monkeypatch.setenv("NO_COLOR", "1")
    assert text.bold("x", terminal) == "x"
    assert text.width_of(terminal) == 40  # still a terminal, only without style
    monkeypatch.setenv("TERM", "dumb")
    assert not text.is_terminal(terminal) and text.width_of(terminal) is None


@pytest.mark.parametrize("columns", ["0", "-5", "wide", ""])
def test_a_columns_that_is_no_width_falls_back_to_the_terminal_s(
    terminal: Terminal, monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    width = text.width_of(terminal)
    assert width is not None and width > 0


# ----------------------------------------------------------------------- layouts


def test_rows_on_a_pipe_are_aligned_whole_lines() -> None:
    pipe = io.StringIO()
    rows = [("π", "3.14"), ("long label", "x " * 100), ("empty", "")]
    lines = text.rows_text(rows, pipe).splitlines()
    assert lines[0] == "π           3.14"
    assert lines[1] == "long label  " + ("x " * 100).rstrip()  # not wrapped, no trailing space
    assert lines[2] == "empty"


def test_rows_on_a_terminal_wrap_under_the_value(terminal: Terminal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    lines = text.rows_text([("label", "word " * 20)], terminal).splitlines()
    assert len(lines) > 1
    assert all(len(line) <= 40 for line in lines)
    assert all(line.startswith(" " * len("label  ")) for line in lines[1:])


def test_rows_escape_what_a_worker_or_a_file_put_in_a_value() -> None:
    out = text.rows_text([("host", "evil\x1b[2J\nname")], io.StringIO())
    assert "\x1b" not in out and "\n" not in out


def test_a_table_on_a_pipe_aligns_numbers_right() -> None:
    table = text.table_text(["name", "n"], [["a", "1"], ["bbb", "100"]], [False, True], io.StringIO())
    assert table.splitlines() == ["name    n", "a       1", "bbb   100"]


def test_a_table_too_wide_for_the_terminal_becomes_one_block_per_row(
    terminal: Terminal, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    headings = ["approach", "wall (s)", "a long heading", "another long heading"]
    table = text.table_text(headings, [["threads", "1.5", "x", "y"]], [False, True, True, True], terminal)
    assert table.splitlines() == [
        "threads",
        "  wall (s)              1.5",
        "  a long heading        x",
        "  another long heading  y",
    ]


@pytest.mark.parametrize("stream", [io.StringIO(), Terminal()], ids=["pipe", "terminal"])
def test_a_table_without_rows_is_its_headings(stream: Any) -> None:
    """``max`` of one width and no row's raised ``TypeError``. Found by this test."""
    table = text.table_text(["approach", "wall (s)"], [], [False, True], stream)
    assert len(table.splitlines()) == 1 and "approach  wall (s)" in table


# ----------------------------------------------------------------------- say


def test_say_is_one_escaped_line_on_stderr() -> None:
    err = io.StringIO()
    with redirect_stderr(err):
        text.say("mcpi estimate", "worker said:\nline two \x1b[31m")
    assert err.getvalue().count("\n") == 1
    assert err.getvalue().startswith("mcpi estimate: worker said:")
    assert "\x1b" not in err.getvalue()


def test_say_to_a_closed_stderr_is_silent() -> None:
    closed = io.StringIO()
    closed.close()
    with redirect_stderr(closed):
        text.say("mcpi", "nobody reads this")  # the exit code still says it
