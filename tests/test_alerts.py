"""The Prometheus alerting rules are valid and behave as their unit tests say.

``config/maintd.rules.yml`` is checked with ``promtool check rules`` and exercised with
``promtool test rules config/maintd.rules.test.yml`` (each alert firing, and each kept quiet
by a normal drain, a short maintenance window, a subsystem that recovers, a daemon that is up).

promtool comes with Debian's ``prometheus`` package, which ``.ci/run`` installs. Without it
these tests skip on a developer's machine and fail in CI (``CI`` set), so a CI run that
silently lost promtool cannot pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import Metrics, daemon_registry
from tests.synthetic import draining_with_work

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "maintd.rules.yml"
RULE_TESTS = ROOT / "config" / "maintd.rules.test.yml"


def find_promtool() -> str:
    """promtool's path; skip without it, or fail when CI is set."""
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not found (Debian package `prometheus`; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, and CI is set: the alert rules must be checked in CI")
        pytest.skip(message)
    return path


def run_promtool(*args: str) -> None:
    """Run promtool from the project root; fail with its whole output if it does not succeed."""
    result = subprocess.run(
        [find_promtool(), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"`promtool {' '.join(args)}` exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )


def test_rules_are_valid() -> None:
    run_promtool("check", "rules", str(RULES.relative_to(ROOT)))


def test_rule_unit_tests_pass() -> None:
    run_promtool("test", "rules", str(RULE_TESTS.relative_to(ROOT)))


def test_the_rules_name_only_series_and_labels_the_daemon_exports() -> None:
    """A metric renamed (``maintd_in_flight``) or a label changed (the state sets' ``state``)
    would leave a rule that never matches: promtool cannot see that, the exposition can."""
    registry = daemon_registry()
    metrics = Metrics(registry)
    metrics.update(draining_with_work(), None)
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        # a family without samples now (a gauge that has no value without a deadline) is still exported
        exported.setdefault(family.name + ("_total" if family.type == "counter" else ""), set())
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    rules = RULES.read_text()
    used = set(re.findall(r"\bmaintd_[a-z_]+", rules)) - {"maintd_"}
    assert used, "no maintd series in the rules?"
    assert used <= set(exported), f"the rules use series maintd does not export: {sorted(used - set(exported))}"
    for name, labels in re.findall(r"\b(maintd_[a-z_]+)\{([^}]*)\}", rules):
        for label in re.findall(r"([a-z_]+)\s*=~?", labels):
            assert label in exported[name] or not exported[name], f"{name} has no label {label!r}"
