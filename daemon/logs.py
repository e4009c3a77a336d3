"""Log lines fit for the journal: one line an event, with sd-daemon(3)'s priority prefix.

Under systemd (``JOURNAL_STREAM`` is set when stderr goes to the journal) each line starts
with ``<N>``, the syslog priority, and carries no timestamp (the journal adds one). On a
terminal each line reads ``LEVEL logger: message``. A message with newlines (a traceback)
is folded onto one line so that one event stays one journal entry.

Text in a message may come from a client (an item's id or description, a reason, a
pipeline name): every control character (C0, DEL, C1) and every bidirectional override in
it is written as a visible escape (``\\x1b``, ``\\u202e``) by :func:`daemon.escape.escape`, so that a
line read in a terminal cannot retitle it, move its cursor, or show its text reordered.
``maintctl`` uses the same function for all it prints in human mode.
"""

from __future__ import annotations

import logging
import os
import sys

from .escape import escape

PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


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
