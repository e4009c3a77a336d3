"""How long the machines run (their settings), and what they ran (``COUNTS``, ``RULES``)."""

from __future__ import annotations

import collections

from hypothesis import HealthCheck, Phase, settings

#: How many examples and steps each machine ran (``conftest.py`` prints them at the end).
COUNTS: collections.Counter[str] = collections.Counter()
#: How often each rule ran.
RULES: collections.Counter[str] = collections.Counter()

SETTINGS = settings(
    max_examples=250,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

#: For the machines that find a defect: search longer (they stop at the first failure),
#: and shrink only that one.
DEFECT_SETTINGS = settings(
    SETTINGS,
    max_examples=1000,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)

#: Who asks, in every machine.
USERS = ("alice", "bob", "carol")
