"""Every error code the daemon can send is in the README's list of stable codes.

The codes are found where they are made: a ``code = "..."`` of an error class, a
``code="..."`` given to an error, and the codes the control server and the protocol answer
with (``error_reply(..., "code", ...)``, ``ProtocolError("code", ...)``).
"""

from __future__ import annotations

import re

from tests.conftest import ROOT

SOURCES = sorted((ROOT / "actors").glob("*.py")) + sorted((ROOT / "daemon").glob("*.py"))
MADE = (
    re.compile(r'\bcode\s*=\s*"([a-z_]+)"'),
    re.compile(r'error_reply\([^,]+,\s*"([a-z_]+)"'),
    re.compile(r'ProtocolError\(\s*"([a-z_]+)"'),
)


def codes_in_source() -> set[str]:
    found: set[str] = set()
    for path in SOURCES:
        text = path.read_text()
        for pattern in MADE:
            found.update(pattern.findall(text))
    return found


def documented() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("codes are stable:")
    sentence = readme[start : readme.index(".", readme.index("`internal`", start))]
    return set(re.findall(r"`([a-z_]+)`", sentence))


def test_every_error_code_the_daemon_sends_is_in_the_readme() -> None:
    codes = codes_in_source()
    assert {"bad_request", "store_unavailable", "maintenance_mode", "conflict"} <= codes  # the search finds them
    missing = codes - documented()
    assert not missing, f"error codes missing from the README's list: {sorted(missing)}"
