"""Text fit for a terminal or the journal: control characters and bidi overrides made visible.

Text in a log line or in what ``maintctl`` prints may come from a client (an item's id or
description, a reason, a pipeline name): every control character (C0, DEL, C1) and every
bidirectional override in it is written as a visible escape (``\\x1b``, ``\\u202e``) by
:func:`escape`, so that a line read in a terminal cannot retitle it, move its cursor, or
show its text reordered. Standard library only (functools): maintctl imports it at start-up,
:mod:`daemon.logs` for every log line.
"""

from __future__ import annotations

import functools

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
