"""The GoCD API and the page read an in-flight item's fields, never its description.

Each item here is made by the code that makes it in the daemon (the material subsystem's
poll, the hand-out's ``job_item``, the agents' ``restored_item``), then shown by
:func:`daemon.gocd_api.gocd_info`. Names and URLs are chosen to break a parser of the
description (``material NAME: URL (BRANCH)``, ``PIPELINE/COUNTER/STAGE/JOB``).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from actors.agents import restored_item
from actors.definitions import MaterialDef
from actors.handout import job_item
from actors.jobs import JobSpec
from actors.materials import MaterialsCore, PollDue
from actors.schema import JobRow
from actors.status import RunningSystems
from actors.types import BUILDING_JOB, SCHEDULED_JOB, InFlightItem
from daemon.gocd_api import gocd_info
from daemon.status_page import render_status_page
from tests.actors.test_jobserver_cores import World
from tests.synthetic import T0, maintenance, status

# A space, a colon and parentheses in the name; parentheses, a colon and a space in the URL.
ODD = MaterialDef(name="my repo: (old)", url="ssh://git@git.example:2222/srv/app (v1).git", branch="release-1.0")


def polled(*, config_repo: bool) -> InFlightItem:
    """The item the material subsystem shows while it polls ``ODD``."""
    w = World()
    core = MaterialsCore(
        "materials", w.sent.append, materials=[] if config_repo else [ODD], config_repos=[ODD] if config_repo else [],
        processes=w.procs, timers=w.timers, clock=w.clock, store=w.store, peers=w.peers,
    )  # fmt: skip
    core.handle(PollDue(f"config:{ODD.name}" if config_repo else ODD.name))
    (item,) = core.items.values()
    return item


def running(*items: InFlightItem) -> dict[str, list[dict[str, Any]]]:
    return gocd_info(status(maintenance("draining"), items=items))["attributes"]["running_systems"]


@pytest.mark.parametrize("config_repo", [False, True])
def test_a_material_update_shows_its_material_whatever_its_name_and_url(config_repo: bool) -> None:
    item = polled(config_repo=config_repo)
    (entry,) = running(item)["material_update_in_progress"]
    assert entry == {
        "type": "git",
        "attributes": {  # GoCD's git material fields (MaintenanceModeInfoRepresenterTest), then maintd's own
            "url": "ssh://git@git.example:2222/srv/app (v1).git",
            "destination": None,
            "filter": None,
            "invert_filter": False,
            "name": "my repo: (old)",
            "auto_update": True,
            "branch": "release-1.0",
            "submodule_folder": None,
            "shallow_clone": False,
            "config_repo": config_repo,
        },
        "mdu_start_time": "2027-01-15T08:00:00Z",  # FakeClock's now
    }


def test_the_page_shows_the_material_from_its_fields() -> None:
    page = render_status_page(status(maintenance("draining"), items=(polled(config_repo=True),)), version="t", now=T0)
    assert "Git (config repo)" in page and "my repo: (old)" in page
    assert "ssh://git@git.example:2222/srv/app (v1).git (release-1.0)" in page


def spec(**kw: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "job_id": 41, "run_id": 3, "pipeline": "build.v2-x", "pipeline_counter": 12, "stage": "unit-test.1",
        "stage_counter": 1, "job": "py3.12-linux", "workspace": "w", "log": "l", "agent": "",
    }  # fmt: skip
    fields.update(kw)
    return JobSpec(**fields)


def test_a_scheduled_job_takes_pipeline_counter_stage_and_job_from_its_fields() -> None:
    item = job_item("scheduler", spec(), SCHEDULED_JOB, T0, blocks_restart=False)
    (entry,) = running(item)["scheduled_jobs"]
    assert entry == {
        "pipeline_name": "build.v2-x",
        "pipeline_counter": 12,
        "stage_counter": "1",
        "stage_name": "unit-test.1",
        "name": "py3.12-linux",
        "state": "Scheduled",
        "scheduled_date": "2026-11-29T03:35:39Z",
        "agent_uuid": None,
    }


def test_a_building_job_restored_from_the_store_keeps_its_counter() -> None:
    row = JobRow(
        id=41, run_id=3, pipeline="build.v2-x", pipeline_counter=12, stage="unit-test.1", stage_counter=1, stage_index=0,
        name="py3.12-linux", state="building", agent="agent-2", scheduled_at=T0, started_at=T0, finished_at=None,
        returncode=None, cancelled_by=None, log_path="l",
    )  # fmt: skip
    (entry,) = running(restored_item("agents", row, T0))["building_jobs"]
    assert (entry["pipeline_name"], entry["pipeline_counter"], entry["stage_name"], entry["name"], entry["agent_uuid"]) == (
        "build.v2-x",
        12,
        "unit-test.1",
        "py3.12-linux",
        "agent-2",
    )


def test_the_counter_comes_from_the_field_not_the_description() -> None:
    # A description is for people: rewording it changes nothing a program reads.
    item = msgspec.structs.replace(job_item("agents", spec(agent="agent-1"), BUILDING_JOB, T0), description="compiling")
    (entry,) = running(item)["building_jobs"]
    assert (entry["pipeline_name"], entry["pipeline_counter"], entry["stage_name"]) == ("build.v2-x", 12, "unit-test.1")


def test_running_systems_groups_and_items_cover_every_group() -> None:
    items = (
        polled(config_repo=False),
        job_item("scheduler", spec(), SCHEDULED_JOB, T0),
        job_item("agents", spec(job_id=7), BUILDING_JOB, T0),
    )
    rs = status(maintenance("draining"), items=items).running_systems
    assert [group for group, _ in rs.groups()] == list(RunningSystems.__struct_fields__)
    assert [group for group, listed in rs.groups() for _ in listed] == [
        "material_update_in_progress",
        "building_jobs",
        "scheduled_jobs",
    ]
    assert sorted(i.id for i in rs.items()) == sorted(i.id for i in items)


def test_a_building_job_shows_when_it_was_scheduled_not_when_it_started() -> None:
    # GoCD's running job: scheduled_date is JobInstance.getScheduledDate() (ServerMaintenanceModeControllerV1
    # copies job.getScheduledDate()), the time the job was scheduled; the agent started it 10 minutes later.
    item = job_item("agents", spec(agent="agent-1", scheduled_at=T0 - 600), BUILDING_JOB, T0, agent="agent-1")
    assert (item.scheduled_at, item.started_at) == (T0 - 600, T0)
    (entry,) = running(item)["building_jobs"]
    assert entry["scheduled_date"] == "2026-11-29T03:25:39Z"
    row = JobRow(
        id=41, run_id=3, pipeline="build.v2-x", pipeline_counter=12, stage="unit-test.1", stage_counter=1, stage_index=0,
        name="py3.12-linux", state="building", agent="agent-2", scheduled_at=T0 - 600, started_at=T0, finished_at=None,
        returncode=None, cancelled_by=None, log_path="l",
    )  # fmt: skip
    (entry,) = running(restored_item("agents", row, T0 + 60))["building_jobs"]
    assert entry["scheduled_date"] == "2026-11-29T03:25:39Z"


def test_the_scheduler_gives_its_jobs_the_time_they_were_scheduled() -> None:
    from actors.definitions import PipelineDef
    from actors.scheduler import SchedulerCore, Trigger

    w = World()
    pipeline = msgspec.convert(
        {"name": "build", "materials": [], "stages": [{"name": "test", "jobs": [{"name": "unit", "command": ["true"]}]}]},
        PipelineDef,
    )
    core = SchedulerCore(
        "scheduler", w.sent.append, pipelines=[pipeline], store=w.store, peers=w.peers, timers=w.timers,
        clock=w.clock, work_root="/tmp/w",
    )  # fmt: skip
    scheduled_at = w.clock.now()
    core.handle(Trigger(pipeline="build", by="t"))
    specs = [*core.queue, *(s for s in core.handed.values() if s is not None)]
    assert specs and all(s.scheduled_at == scheduled_at for s in specs)
