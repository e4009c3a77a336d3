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

from actors.eta import Durations, drain_eta
from actors.status import RemovedSubsystem, StoreInfo, SubsystemInfo
from daemon.status_page import (
    HELP_PATH,
    STARTED_IN_MAINTENANCE,
    TEMPLATES,
    page_context,
    render_error_page,
    render_status_page,
)
from daemon.times import hhmm, human
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


# -- the page's lines, from page_context ---------------------------------------------------------


def lines(context: dict) -> dict[str, tuple[bool, str, str]]:
    return {c["slug"]: (c["done"], c["text"], c["detail"]) for c in context["checklist"]}


def test_the_scheduling_line_waits_for_building_jobs_as_gocds_does() -> None:
    building_ = status(maintenance("draining"), builtins("drained"), (building(),))
    assert lines(page_context(building_, version="v", now=T0))["scheduler"] == (
        False,
        "Waiting for building jobs to finish..",
        "1 job(s) building",
    )
    idle = status(maintenance("draining"), builtins("drained"))
    assert lines(page_context(idle, version="v", now=T0))["scheduler"][:2] == (True, "Stopped scheduling subsystem.")


def test_pipeline_triggers_stop_when_materials_and_scheduler_are_paused() -> None:
    subs = (sub("materials", "paused"), sub("scheduler", "paused"), *builtins("drained")[2:])
    assert lines(page_context(status(maintenance("draining"), subs), version="v", now=T0))["triggers"][:2] == (
        True,
        "Stopped pipeline triggers.",
    )
    subs = (sub("materials", "pausing"), *builtins("paused")[1:])
    got = lines(page_context(status(maintenance("draining"), subs), version="v", now=T0))["triggers"]
    assert got[:2] == (False, "Waiting for pipeline triggers to stop..")


def test_the_database_line_waits_for_the_stores_pending_writes() -> None:
    degraded = msgspec.structs.replace(
        status(maintenance("draining"), builtins("drained")), store=StoreInfo(state="degraded", pending_writes=3)
    )
    assert lines(page_context(degraded, version="v", now=T0))["store"] == (
        False,
        "Waiting for database and filesystem to be in inactive state..",
        "3 write(s) pending, store degraded",
    )
    ok = status(maintenance("drained"), builtins("drained"))
    assert lines(page_context(ok, version="v", now=T0))["store"][:2] == (True, "Stopped database and filesystem modifications.")


def test_the_config_repo_line_shows_only_where_there_are_config_repos() -> None:
    st = status(maintenance("draining"), builtins("paused"), (mdu("app"),))
    assert "config-repos" not in lines(page_context(st, version="v", now=T0, config_repos=False))
    assert "config-repos" not in lines(page_context(st, version="v", now=T0))  # unknown, and none polling
    assert lines(page_context(st, version="v", now=T0, config_repos=True))["config-repos"][:2] == (
        True,
        "Stopped polling on config repositories.",
    )
    polling = status(maintenance("draining"), builtins("paused"), (mdu("pipes", config_repo=True),))
    assert lines(page_context(polling, version="v", now=T0))["config-repos"] == (
        False,
        "Waiting for config repository polling to stop..",
        "1 config repo poll(s) running",
    )


def test_the_banner_is_in_local_time_links_the_readme_and_words_a_start_in_maintenance() -> None:
    page = render_status_page(status(maintenance("draining")), version="v", now=T0)
    assert f"root turned on maintenance mode at {human(T0 + 3.926)}." in page
    assert f'<a href="{HELP_PATH}">What maintenance mode does</a>' in page
    started = maintenance("draining", updated_by="maintd", reason=STARTED_IN_MAINTENANCE)
    page = render_status_page(status(started), version="v", now=T0)
    assert "This server was started in maintenance mode at" in page
    assert "maintd turned on" not in page


def test_running_times_the_deadline_countdown_and_an_mdus_poll_timeout() -> None:
    stuck = msgspec.structs.replace(mdu("app"), timeout_at=T0 + 300)
    m = maintenance("draining", deadline=T0 + 600)
    context = page_context(status(m, builtins("paused"), (building(), stuck)), version="v", now=T0 + 252)
    assert context["building"][0]["jobs"][0]["ran"] == "4m12s"
    (u,) = context["mdus"]
    assert u["ran"] == "4m12s"
    assert u["timeout"] == f"poll_timeout ends it at {human(T0 + 300)} (in 48s)"
    assert dict(context["maintenance"]["rows"])["Deadline"] == f"{human(T0 + 600)} (in 5m48s)"
    late = page_context(status(maintenance("draining", deadline=T0 + 60, overdue=True)), version="v", now=T0 + 252)
    assert dict(late["maintenance"]["rows"])["Deadline"] == f"{human(T0 + 60)} (passed 3m12s ago: overdue)"
    past = page_context(status(m, builtins("paused"), (stuck,)), version="v", now=T0 + 301)
    assert past["mdus"][0]["timeout"] == "past its poll_timeout"


def test_the_drain_eta_and_each_items_note() -> None:
    items = (building(job_id=1), building("lint", job_id=2), mdu("app"))
    history = Durations(jobs={("build", "test", "unit"): [300.0] * 5, ("build", "test", "lint"): [60.0] * 5})
    st = status(maintenance("draining"), builtins("paused"), items)
    now = T0 + 120
    st = msgspec.structs.replace(st, eta=drain_eta(items, history, now))
    context = page_context(st, version="v", now=now)
    assert context["eta"] == "no estimate: 1 item(s) without history"
    jobs = {j["id"]: j["eta"] for j in context["building"][0]["jobs"]}
    assert jobs["agents/job-2"] == "overdue against history (5 runs)"
    assert jobs["agents/job-1"] == f"expected to end about {hhmm(T0 + 300)} (p90 {hhmm(T0 + 300)}; 5 runs)"
    assert context["mdus"][0]["eta"] == "no history"
    known = msgspec.structs.replace(st, eta=drain_eta(items[:2], history, now))
    page = render_status_page(known, version="v", now=now)
    assert f'<p id="drain-eta">Expected drained in about 3 min (p90 3 min), by {hhmm(T0 + 300)}.</p>' in page


def test_the_why_section_lists_what_holds_the_restart() -> None:
    subs = (*builtins("paused")[:2], sub("agents", "paused"), sub("config", "drained"), sub("batch", "pausing", external=True))
    subs = (*subs[:4], msgspec.structs.replace(subs[4], pause_asked_at=T0 - 90))
    st = status(maintenance("draining"), subs, (building(), mdu("app"), scheduled()))
    why = page_context(st, version="v", now=T0 + 30)["why"]
    assert not why["safe"]
    groups = {g["name"]: g for g in why["subsystems"]}
    assert set(groups) == {"materials", "scheduler", "agents", "batch"}  # config drained, nothing of its own
    (job,) = groups["agents"]["items"]
    assert (job["id"], job["cancel"], job["since"]) == ("agents/job-1", "maintctl cancel agents/job-1", f"{human(T0)} (30s)")
    assert groups["materials"]["items"][0]["cancel"] is None  # an MDU is never cancelled
    assert groups["scheduler"]["items"] == []  # a scheduled job does not hold the restart
    assert groups["batch"]["silent"] == f"silent for 2m00s (asked at {hhmm(T0 - 90)})"
    page = render_status_page(st, version="v", now=T0 + 30)
    assert '<section id="why">' in page and "<code>maintctl cancel agents/job-1</code>" in page
    drained = status(maintenance("drained", since=T0), builtins("drained"))
    assert f"Nothing: safe to restart since {hhmm(T0)}." in render_status_page(drained, version="v", now=T0)


def test_the_banners_link_is_a_page_maintd_serves() -> None:
    """The banner's "What maintenance mode does" goes to maintd's own /help, not a guessed address."""
    from daemon.status_page import render_help_page

    page = render_help_page(None, version="1.0", now=1_800_000_000.0)
    assert "What maintenance mode does" in page and "maintctl window --reason R --deadline 30m" in page
    assert HELP_PATH == "/help"
