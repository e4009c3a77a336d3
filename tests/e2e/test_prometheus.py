"""A real Prometheus server scrapes a real maintd through a drain, and the shipped alert rules
(config/maintd.rules.yml, their ``for:`` shortened in a copy) fire and resolve live.

Prometheus is Debian's ``prometheus`` package (``.ci/run`` installs it for promtool): without
it the test skips on a developer's machine and fails under CI. It runs on a free port of its
own with a data directory in the test's temporary directory, scrapes and evaluates every
second, and is stopped at the end. Every wait polls its HTTP API with a deadline.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import ROOT, Daemon, Line
from tests.synthetic import need_tool

T = TypeVar("T")

RULES = ROOT / "config" / "maintd.rules.yml"
#: How long to wait for Prometheus to see a change: a scrape and an evaluation a second, and
#: ``for: 1s``, take a few seconds; a loaded CI machine gets many more.
SEEN = 40.0
BLOCKING = {"id": "dump", "kind": "backup", "description": "nightly dump", "cancellable": True}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fast_rules() -> str:
    """The shipped rules with every ``for:`` one second and a drain stuck after 2 seconds, not 30 minutes."""
    text = RULES.read_text()
    text, fors = re.subn(r"\bfor: \d+[smh]\b", "for: 1s", text)
    assert fors >= 6, "the rules file changed shape: shorten its new `for:`s here"
    assert text.count("> 1800)") == 1, "MaintdDrainStuck's 30 minutes moved: shorten it here"
    return text.replace("> 1800)", "> 2)")


def poll(fetch: Callable[[], T | None], what: str, timeout: float = SEEN) -> T:
    """``fetch()`` until it returns something other than None (or False), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fetch()
        if last is not None and last is not False:
            return last
        time.sleep(0.1)  # the pace of the polling only: each round asks Prometheus again
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Prometheus:
    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "maintd.rules.yml").write_text(fast_rules())
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(tmp / "maintd.rules.yml")],
            "scrape_configs": [{"job_name": "maintd", "static_configs": [{"targets": [target]}]}],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = tmp / "prometheus.log"
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                need_tool("prometheus", package="prometheus"),
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        poll(self.ready, "Prometheus to be ready", 60)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query: each series' labels (without the name) and value."""
        return {
            tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")): float(s["value"][1])
            for s in self.api("query", query=expr)["result"]
        }

    def firing(self) -> dict[str, list[dict[str, str]]]:
        """The alerts firing now, by name: each one's labels."""
        out: dict[str, list[dict[str, str]]] = {}
        for alert in self.api("alerts")["alerts"]:
            if alert["state"] == "firing":
                out.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def world(tmp_path: Path, make_daemon: Any) -> Iterator[tuple[Daemon, Prometheus]]:
    d = make_daemon(config='[control]\nreconnect_grace = "1s"\n')
    prometheus = Prometheus(tmp_path / "prometheus", d.http_url().removeprefix("http://"))
    try:
        yield d, prometheus
    finally:
        prometheus.stop()


def seen(prometheus: Prometheus, expr: str, expected: dict[tuple[tuple[str, str], ...], float] | None = None) -> Any:
    """Poll until ``expr`` has a result (equal to ``expected`` when given)."""

    def fetch() -> Any:
        result = prometheus.query(expr)
        return result if result and (expected is None or result == expected) else None

    return poll(fetch, f"Prometheus to see {expr}" + (f" == {expected}" if expected is not None else ""))


def firing(prometheus: Prometheus, name: str, now: bool = True) -> None:
    """Poll until alert ``name`` fires (``now``) or no longer does."""
    poll(lambda: (name in prometheus.firing()) == now, f"{name} to {'fire' if now else 'resolve'}")


def test_prometheus_sees_a_drain_and_the_shipped_alerts_fire_and_resolve(world: tuple[Daemon, Prometheus]) -> None:
    d, prometheus = world
    exporter = d.client()
    assert exporter.request("register", name="exporter")["ok"]
    exporter.send(type="in_flight", items=[BLOCKING])
    seen(
        prometheus,
        'maintd_in_flight_items{subsystem="exporter"}',
        {(("instance", prom_target(d)), ("job", "maintd"), ("kind", "backup"), ("subsystem", "exporter")): 1},
    )

    # The series as Prometheus holds them: no _created, state sets labelled `state`, in-flight
    # series only for the kinds a subsystem holds, no deadline without a drain deadline.
    names = set(prometheus.api("label/__name__/values"))
    assert {"maintd_maintenance_state", "maintd_jobs_total", "maintd_drain_duration_seconds_count"} <= names
    assert not [n for n in names if n.endswith("_created")]
    assert "maintd_in_flight" not in names and "maintd_drain_deadline_timestamp_seconds" not in names
    assert without_target(prometheus.query("maintd_maintenance_state")) == {
        (("state", "normal"),): 1,
        (("state", "draining"),): 0,
        (("state", "drained"),): 0,
    }
    assert set(prometheus.api("label/state/values")) >= {"normal", "draining", "drained", "running", "failed", "disconnected"}
    kinds = {(dict(k)["subsystem"], dict(k)["kind"]) for k in prometheus.query("maintd_in_flight_items")}
    assert kinds == {
        ("materials", "material_update"),
        ("scheduler", "scheduled_job"),
        ("agents", "building_job"),
        ("exporter", "backup"),
    }
    assert without_target(prometheus.query('maintd_subsystem_state{subsystem="agents"} == 1')) == {
        (("state", "running"), ("subsystem", "agents")): 1
    }
    # MaintdAbsent may have fired before the first scrape (no `up` yet, `for:` 1s): it resolves
    poll(lambda: prometheus.firing() == {}, "no alert to fire while all is well")

    # A drain with a 2-second deadline that the exporter's work outlasts: overdue, stuck (after
    # 2 seconds in the copy), maintenance left on (its 4 hours now 1 second).
    admin = d.client()
    reply = admin.request("enable", reason="prometheus test", deadline_seconds=2)
    assert reply["ok"], reply
    pause = exporter.next_event(lambda m: m.get("type") == "pause_intake")
    exporter.send(type="intake_paused", drain_id=pause["drain_id"])
    deadline = seen(prometheus, "maintd_drain_deadline_timestamp_seconds")
    assert abs(next(iter(deadline.values())) - time.time()) < 60
    seen(prometheus, 'maintd_maintenance_state{state="draining"} == 1')
    for name in ("MaintdDrainOverdue", "MaintdDrainStuck", "MaintdMaintenanceLeftOn"):
        firing(prometheus, name)
    assert "MaintdSubsystemFailed" not in prometheus.firing()

    # The work ends: drained. Overdue and stuck resolve; maintenance is still on.
    exporter.send(type="in_flight", items=[])
    exporter.send(type="drained", drain_id=pause["drain_id"])
    seen(prometheus, "maintd_safe_to_restart == 1")
    seen(prometheus, "maintd_drain_duration_seconds_count == 1")
    firing(prometheus, "MaintdDrainOverdue", now=False)
    firing(prometheus, "MaintdDrainStuck", now=False)
    assert "MaintdMaintenanceLeftOn" in prometheus.firing()

    # Off: left-on resolves and the deadline's series goes (stale), not to 0.
    assert admin.request("disable")["ok"]
    firing(prometheus, "MaintdMaintenanceLeftOn", now=False)
    poll(lambda: prometheus.query("maintd_drain_deadline_timestamp_seconds") == {}, "the deadline series to go")
    seen(prometheus, 'maintd_maintenance_state{state="normal"} == 1')

    # An external's process goes away with work in flight and does not come back within the
    # grace (1s): a failure, and MaintdSubsystemFailed fires; it resolves once it registers again.
    backup = Line(d.socket)
    assert backup.request("register", name="backup")["ok"]
    backup.send(type="in_flight", items=[BLOCKING])
    seen(prometheus, 'maintd_in_flight_items{subsystem="backup"} == 1')
    seen(prometheus, 'maintd_subsystem_failures_total{subsystem="backup"} == 0')
    backup.close()
    seen(prometheus, 'maintd_subsystem_failures_total{subsystem="backup"} == 1')
    firing(prometheus, "MaintdSubsystemFailed")
    (alert,) = prometheus.firing()["MaintdSubsystemFailed"]
    assert (alert["subsystem"], alert["severity"]) == ("backup", "critical")
    assert prometheus.query('maintd_subsystem_state{subsystem="backup"}') == {}
    again = Line(d.socket)
    try:
        assert again.request("register", name="backup")["ok"]
        again.send(type="in_flight", items=[])
        firing(prometheus, "MaintdSubsystemFailed", now=False)
        # the counter never went down: the name's new subsystem starts from the old count
        assert without_target(prometheus.query('maintd_subsystem_failures_total{subsystem="backup"}')) == {
            (("subsystem", "backup"),): 1
        }
    finally:
        again.close()

    # The daemon stops: MaintdDown fires.
    d.stop()
    firing(prometheus, "MaintdDown")


def prom_target(d: Daemon) -> str:
    return d.http_url().removeprefix("http://")


def without_target(result: dict[tuple[tuple[str, str], ...], float]) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple((k, v) for k, v in labels if k not in ("job", "instance")): value for labels, value in result.items()}
