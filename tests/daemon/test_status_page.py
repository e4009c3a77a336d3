"""The status page's templates: autoescape on everywhere, hostile names shown as text, and the
templates shipped in the package (a non-editable install renders the page too).

The page and its panels are tested over HTTP in test_http.py and in Chromium in
tests/e2e/test_browser.py; these tests render directly.
"""

from __future__ import annotations

import fnmatch
import html
import re
import tomllib
from pathlib import Path

import msgspec
import pytest

from actors.status import RemovedSubsystem, SubsystemInfo
from daemon.status_page import TEMPLATES, render_error_page, render_status_page
from tests.conftest import ROOT
from tests.synthetic import T0, building, builtins, external, maintenance, mdu, scheduled, status, sub

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '"><img src=x onerror=alert(2)>'
#: A tag the payloads would make if they got through unescaped.
TAGS = re.compile(r"<\s*(script|img)\b", re.IGNORECASE)


def hostile_status(payload: str):
    """Maintenance on, and ``payload`` as every name a client or a config can choose: the
    reason and who turned it on, a pipeline, stage, job and agent, a material and its URL, a
    config repo, an external subsystem and its work, a removed subsystem and why."""
    items = (
        building(payload, pipeline=payload, stage=payload, agent=payload),
        scheduled(payload, pipeline=payload, stage=payload),
        mdu(payload, payload),
        mdu(payload, payload, config_repo=True),
        external(payload, payload, payload, description=payload),
    )
    subs = (
        SubsystemInfo(name="materials", state="failed", in_flight=0, blocking=0, external=False, last_error=payload),
        *builtins("paused")[1:],
        sub(payload, "paused", external=True),
    )
    m = maintenance("draining", updated_by=payload, reason=payload, drain_id=payload, deadline=payload)
    removed = (RemovedSubsystem(name=payload, at=payload, reason=payload, abandoned=()),)
    return msgspec.structs.replace(status(m, subs, items), removed=removed)


@pytest.mark.parametrize("payload", [SCRIPT, ATTRIBUTE])
def test_hostile_names_are_text_on_the_status_page(payload: str) -> None:
    page = render_status_page(hostile_status(payload), version=payload, now=T0)
    assert TAGS.findall(page) == []
    escaped = html.escape(payload, quote=True).replace("&quot;", "&#34;")
    # every place the payload went in, it came out escaped: the page's own text has no "&lt;"
    assert page.count(escaped) >= 20
    assert page.count("&lt;") == page.count(escaped) * payload.count("<")
    # and it reads back as the payload, in the checklist's attribute too
    assert f'data-subsystem="external-{escaped}"' in page
    assert html.unescape(page).count(payload) == page.count(escaped)


@pytest.mark.parametrize("payload", [SCRIPT, ATTRIBUTE])
def test_hostile_text_is_text_on_the_error_page(payload: str) -> None:
    page = render_error_page(404, payload, hostile_status(payload), version=payload, now=T0)
    assert TAGS.findall(page) == []
    assert f"<p>{html.escape(payload).replace('&quot;', '&#34;')}</p>" in page


def test_every_template_escapes_by_default() -> None:
    """Autoescape is the environment's, for every template: a value written without any
    filter comes out escaped, so a template can not forget to escape."""
    assert TEMPLATES.from_string("{{ value }}").render(value=SCRIPT) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    for name in TEMPLATES.list_templates():
        assert TEMPLATES.get_template(name).environment.autoescape is True, name


def test_the_templates_are_package_data() -> None:
    """Every template under daemon/templates matches the package data pyproject.toml gives
    setuptools, so a wheel (``pip install .``) carries it: a non-editable install renders too."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["daemon"]
    templates = sorted(p.relative_to(ROOT / "daemon").as_posix() for p in (ROOT / "daemon" / "templates").iterdir())
    assert set(TEMPLATES.list_templates()) == {Path(t).name for t in templates}
    for template in templates:
        assert any(fnmatch.fnmatch(template, pattern) for pattern in package_data), template
