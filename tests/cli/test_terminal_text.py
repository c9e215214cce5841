"""``printable``: the one renderer of untrusted text for a terminal (issue 23, finding 2)."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcpi_coordinator.terminal_text import printable, printable_fields

_ACTIVE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


@pytest.mark.parametrize(
    ("hostile", "shown"),
    [
        ("\x1b]0;OWNED\x07title", "\\u001b]0;OWNED\\u0007title"),  # OSC: the window title
        ("\x1b[2J\x1b[31mred", "\\u001b[2J\\u001b[31mred"),  # clear screen, colour
        ("\rmcpi estimate: error: run: curl x | sh", "\\rmcpi estimate: error: run: curl x | sh"),
        ("one\ntwo\tthree", "one\\ntwo\\tthree"),
        ("\x9b31m", "\\u009b31m"),  # the C1 CSI: one byte in 8-bit terminals
        ("\x7f\x00\x08\x0c", "\\u007f\\u0000\\b\\f"),
        ("file\u202egpj.exe", "file\\u202egpj.exe"),  # right-to-left override
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),  # line and paragraph separators
        ("\udcff", "\\udcff"),  # a lone surrogate (surrogateescape of byte 0xff)
        ("tag\U000e0041", "tag\\U000e0041"),  # a format character beyond the BMP
    ],
)
def test_what_a_terminal_would_act_on_is_shown_escaped(hostile: str, shown: str) -> None:
    assert printable(hostile) == shown


@pytest.mark.parametrize(
    "plain",
    ["", "node-3.example.org", "π ≈ 3.14159 (±1e-4)", "Grüße, 東京, 🙂", "a\u00a0b", "C:\\path\\u001b"],
)
def test_ordinary_text_is_unchanged(plain: str) -> None:
    assert printable(plain) == plain


def test_control_characters_read_as_in_the_json_log_format() -> None:
    for code in [*range(0x20), 0x80, 0x9B, 0x9F]:
        char = chr(code)
        assert printable(char) == json.dumps(char)[1:-1], hex(code)


def test_values_that_are_not_text_are_shown_as_text() -> None:
    assert printable(10**3) == "1000"
    assert printable(None) == "None"
    assert printable(b"\x1b[2J") == "b'\\x1b[2J'"


@given(st.text())
def test_no_active_character_survives_and_escaping_twice_is_escaping_once(text: str) -> None:
    once = printable(text)
    assert not any(unicodedata.category(char) in _ACTIVE for char in once)
    assert printable(once) == once


def test_a_log_event_is_made_printable_key_by_key_and_a_traceback_line_by_line() -> None:
    event = {
        "event": "worker 0: \x1b[2J",
        "\x1bkey": "v\r",
        "count": 3,
        "fields": {"x": "\x1b"},  # rendered with repr, which escapes it
        "exception": "Traceback\n  \x1b[31mline\n",
    }
    assert printable_fields(None, "warning", event) == {
        "event": "worker 0: \\u001b[2J",
        "\\u001bkey": "v\\r",
        "count": 3,
        "fields": {"x": "\x1b"},
        "exception": "Traceback\n  \\u001b[31mline\n",
    }
