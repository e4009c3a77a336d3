"""One answer everywhere (issue 9, item 5): the socket status, GoCD's HTTP info, the metric and
``maintctl wait`` never disagree about whether running work is in the way of a restart.

The supervisor's core is driven with fake ports through generated subsystems (reported or
not, paused or not, said drained or not, failed or not) and generated work (every kind,
blocking or not). Its status then goes through the very functions that render each answer:
the hub's JSON encoding (what ``status``/``watch``/``wait`` read), ``gocd_info`` (the HTTP
info), ``Metrics.update`` (the gauge) and maintctl's ``safe_line``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from actors.messages import Drained, Enable, InFlightReport, IntakePaused, SubsystemFailed
from actors.safety import has_running_work
from actors.supervisor import SupervisorCore
from daemon.gocd_api import gocd_info
from daemon.hub import StatusHub
from daemon.metrics import Metrics
from maintctl import render
from tests.actors.fakes import FakeClock, FakeSink, FakeTimers, item

KINDS = ("material_update", "building_job", "scheduled_job", "batch")


class NullRef:
    def tell(self, message: Any) -> None:
        pass

    def stop(self, block: bool = True) -> None:
        pass


class NowBridge:
    def call_soon(self, fn: Any, *args: Any) -> None:
        fn(*args)


subsystem = st.fixed_dictionaries(
    {
        "reported": st.booleans(),
        "acked": st.booleans(),
        "said_drained": st.booleans(),
        "failed": st.booleans(),
        "external": st.booleans(),
        "items": st.lists(st.tuples(st.sampled_from(KINDS), st.booleans()), max_size=4),
    }
)


def build(subsystems: list[dict[str, Any]], enabled: bool) -> Any:
    core = SupervisorCore(clock=FakeClock(), timers=FakeTimers(), sink=FakeSink())
    names = [f"s{i}" for i in range(len(subsystems))]
    for name, spec in zip(names, subsystems, strict=True):
        core.add_subsystem(name, lambda generation, items: NullRef(), external=spec["external"])
    if enabled:
        core.enable(Enable(by="alice"))
    for name, spec in zip(names, subsystems, strict=True):
        if spec["reported"]:
            items = tuple(item(name, f"w{n}", kind, blocks=blocks) for n, (kind, blocks) in enumerate(spec["items"]))
            core.on_report(InFlightReport(subsystem=name, items=items))
        if enabled and spec["acked"]:
            core.on_intake_paused(IntakePaused(subsystem=name, drain_id=core.drain_id or ""))
        if enabled and spec["said_drained"]:
            core.on_drained(Drained(subsystem=name, drain_id=core.drain_id or ""))
        if spec["failed"]:
            core.on_failed(SubsystemFailed(subsystem=name, generation=0, error="boom"))
    return core.status()


def answers(status: Any) -> dict[str, Any]:
    hub = StatusHub(NowBridge(), on_fatal=lambda error: None)  # type: ignore[arg-type]
    hub.publish(status, None)
    socket_status = msgspec.json.decode(hub.status_json())
    metrics = Metrics(CollectorRegistry())
    metrics.update(status)
    gauge = metrics.registry.get_sample_value("maintd_safe_to_restart")
    info = gocd_info(status)
    return {
        "socket": socket_status["maintenance"]["safe_to_restart"],
        "metric": gauge == 1,
        "wait": render.safe_line(socket_status["maintenance"]) == "Safe to restart: YES",
        "http_running": info["attributes"]["has_running_systems"] if "attributes" in info else None,
    }


@settings(max_examples=300, deadline=None)
@given(subsystems=st.lists(subsystem, max_size=4), enabled=st.booleans())
def test_socket_http_metric_and_wait_never_disagree(subsystems: list[dict[str, Any]], enabled: bool) -> None:
    status = build(subsystems, enabled)
    got = answers(status)
    safe = status.maintenance.safe_to_restart
    assert got["socket"] is safe and got["metric"] is safe and got["wait"] is safe
    if not enabled:
        assert got["http_running"] is None and not safe
        return
    blocking_work = any(blocks for spec in subsystems if spec["reported"] for _kind, blocks in spec["items"])
    # has_running_systems is exactly "there is work that blocks the restart" ...
    assert got["http_running"] is blocking_work is has_running_work(status.running_systems)
    # ... so it is never true while everything else says safe ...
    assert not (safe and got["http_running"])
    # ... and once every subsystem has stopped and said drained, it is the only reason left.
    settled = all(s["reported"] and s["acked"] and s["said_drained"] and not s["failed"] for s in subsystems)
    if settled:
        assert safe is not got["http_running"]


def test_a_non_blocking_building_job_or_material_update_is_not_running_work() -> None:
    """The concrete bug: GoCD's info said has_running_systems true for ever while all else said safe."""
    spec = {"reported": True, "acked": True, "said_drained": True, "failed": False, "external": True}
    status = build([{**spec, "items": [("building_job", False), ("material_update", False)]}], enabled=True)
    got = answers(status)
    assert status.maintenance.safe_to_restart
    assert (got["socket"], got["metric"], got["wait"], got["http_running"]) == (True, True, True, False)
