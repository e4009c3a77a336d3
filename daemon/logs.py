"""Log lines fit for the journal: one line an event, with sd-daemon(3)'s priority prefix.

Under systemd (``JOURNAL_STREAM`` is set when stderr goes to the journal) each line starts
with ``<N>``, the syslog priority, and carries no timestamp (the journal adds one). On a
terminal each line reads ``LEVEL logger: message``. A message with newlines (a traceback)
is folded onto one line so that one event stays one journal entry.

Text in a message may come from a client (an item's id or description, a reason, a
pipeline name): every control character (C0, DEL, C1) and every bidirectional override in
it is written as a visible escape (``\\x1b``, ``\\u202e``) by :func:`escape`, so that a
line read in a terminal cannot retitle it, move its cursor, or show its text reordered.
``maintctl`` uses the same function for all it prints in human mode.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


#: Bidirectional formatting characters (and the line and paragraph separators): they reorder
#: or break what a terminal shows, so they are shown as escapes like the control characters.
BIDI = "\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def _escaped(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_ESCAPES = {code: _escaped(code) for code in (*range(0x20), *range(0x7F, 0xA0), *map(ord, BIDI))}


def escape(text: str, keep: str = "") -> str:
    """``text`` with every control character and bidi override, except those in ``keep``, escaped."""
    if text.isprintable() and text.isascii():  # the common case, without a copy
        return text
    return text.translate(_table(keep))


@functools.cache
def _table(keep: str) -> dict[int, str]:
    return {code: text for code, text in _ESCAPES.items() if chr(code) not in keep}


def priority(levelno: int) -> int:
    for level in sorted(PRIORITY, reverse=True):
        if levelno >= level:
            return PRIORITY[level]
    return 7


class JournalFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__("%(name)s: %(message)s" if journal else "%(levelname)s %(name)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = escape(super().format(record), keep="\n\t").replace("\n", " | ")
        return f"<{priority(record.levelno)}>{text}" if self.journal else text


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pykka logs every exception an ask returns to its caller; ours are refusals the
    # control socket already reports, so only its warnings (dead actors, failures) stay.
    logging.getLogger("pykka").setLevel(logging.WARNING)
