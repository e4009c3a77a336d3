"""Prints what the machines ran, once the package's tests have run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.actors.drain_properties.runs import COUNTS, RULES


@pytest.fixture(scope="package", autouse=True)
def report_how_many_examples_and_steps_ran(request: pytest.FixtureRequest) -> Iterator[None]:
    """Once the package's tests have run, whichever ran and in whatever order: what the machines ran."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\ndrain properties ran:", ", ".join(f"{k}: {v}" for k, v in sorted(COUNTS.items())))
        print("rules:", ", ".join(f"{k}: {v}" for k, v in sorted(RULES.items())))
