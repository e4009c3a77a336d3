"""The escaping of text for a terminal and for the log (issue 9, item 10)."""

from __future__ import annotations

import logging

from daemon.logs import JournalFormatter, escape
from maintctl import render


def test_controls_c1_and_bidi_are_escaped_and_ordinary_text_is_kept() -> None:
    assert escape("build #7 — ünïcode ok") == "build #7 — ünïcode ok"
    assert escape("a\x1b]0;t\x07b") == "a\\x1b]0;t\\x07b"
    assert escape("\r\n\t\x7f\x85\x9b") == "\\x0d\\x0a\\x09\\x7f\\x85\\x9b"
    for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c":
        assert escape(f"x{c}y") == f"x\\u{ord(c):04x}y"
    assert escape("one\ntwo\x1b", keep="\n") == "one\ntwo\\x1b"


def test_the_log_keeps_one_line_per_event_and_shows_no_raw_control() -> None:
    record = logging.LogRecord("maintd.x", logging.INFO, __file__, 1, "cancel %s", ("a\x1b]0;p\x07\r\nb\u202e",), None)
    for journal in (False, True):
        line = JournalFormatter(journal=journal).format(record)
        assert "\n" not in line and "\x1b" not in line and "\r" not in line and "\u202e" not in line
        assert "a\\x1b]0;p\\x07\\x0d | b\\u202e" in line


def test_render_cleans_every_string_it_is_given() -> None:
    item = {"id": "s/\x1b[2J", "kind": "batch", "description": "\u202eevil", "started_at": None, "cancellable": False}
    (row,) = render.items_table([item])
    assert "\x1b" not in row and "\u202e" not in row and "s/\\x1b[2J" in row and "\\u202eevil" in row
    assert render.terminal("ok\n\x1b]0;t\x07") == "ok\n\\x1b]0;t\\x07"
