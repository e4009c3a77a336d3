"""maintd under a real systemd (PID 1 in a container): an operator's day with the shipped units.

Each test boots a fresh machine (``tests/systemd/machine.py``), installs the units, the
sysusers and tmpfiles snippets, and drives maintd only through ``systemctl``,
``journalctl`` and ``maintctl``, as an operator would.
"""

from __future__ import annotations

import json
import re
import time

from tests.systemd.conftest import MAINTCTL, config
from tests.systemd.machine import Machine

#: The unit's TimeoutStopSec=: a stop must end within it.
TIMEOUT_STOP = 90.0


def maintctl(box: Machine, *args: str, user: str | None = None, check: bool = True) -> str:
    return box.run(MAINTCTL, *args, user=user, check=check).stdout


def runs(box: Machine) -> list[dict]:
    return json.loads(maintctl(box, "runs", "--json"))["runs"]


def jobs(box: Machine) -> list[dict]:
    return [job for run in runs(box) for job in run["jobs"]]


def job_state(box: Machine) -> str | None:
    found = jobs(box)
    return found[0]["state"] if found else None


def status_text(box: Machine) -> str:
    return box.show("maintd.service", "StatusText")["StatusText"]


def main_pid(box: Machine) -> int:
    return int(box.show("maintd.service", "MainPID")["MainPID"])


def start(box: Machine, toml: str) -> None:
    box.write("/etc/maintd/maintd.toml", toml)
    box.run("systemctl", "start", "maintd.service")


def wait_building(box: Machine) -> None:
    box.wait_for(lambda: job_state(box) == "building", what="the job building")


def job_pids(box: Machine) -> list[int]:
    """Every process of the maintd user but the daemon itself."""
    daemon = main_pid(box)
    out = box.run("pgrep", "-u", "maintd", check=False).stdout
    return [int(p) for p in out.split() if int(p) != daemon]


def test_start_returns_after_ready_and_status_text_says_the_state(machine: Machine) -> None:
    start(machine, config("sleep 5"))
    # Type=notify: `systemctl start` returns once READY=1 came, which maintd sends after it
    # serves the control socket and HTTP: both are logged before systemd's "Started".
    assert machine.show("maintd.service", "Type", "ActiveState") == {"Type": "notify", "ActiveState": "active"}
    journal = machine.journal("-u", "maintd.service")
    started = journal.index("Started maintd.service")
    assert journal.index("socket activation: serving") < started, journal
    assert journal.index("http on 127.0.0.1:9187") < started, journal
    assert machine.run("curl", "-fsS", "http://127.0.0.1:9187/api/maintenance_mode/info").stdout
    # the status page's templates came with `pip install .` (package data)
    assert "Maintenance mode is off." in machine.run("curl", "-fsS", "http://127.0.0.1:9187/").stdout
    assert status_text(machine).startswith("normal")

    wait_building(machine)
    maintctl(machine, "enable", "--reason", "upgrade")
    machine.wait_for(lambda: status_text(machine).startswith("draining: waiting for agents"), what="the drain in words")
    machine.wait_for(lambda: status_text(machine) == "drained: safe to restart", what="drained", timeout=30)
    shown = machine.run("systemctl", "status", "--no-pager", "maintd.service", check=False).stdout
    assert 'Status: "drained: safe to restart"' in shown
    maintctl(machine, "disable")
    machine.wait_for(lambda: status_text(machine).startswith("normal"), what="normal again")


def test_socket_activation_starts_the_service_on_first_use(machine: Machine) -> None:
    machine.write("/etc/maintd/maintd.toml", config("true"))
    machine.run("systemctl", "start", "maintd.socket")
    assert machine.show("maintd.service", "ActiveState")["ActiveState"] == "inactive"
    out = maintctl(machine, "status")
    assert "Maintenance mode: off" in out
    assert machine.show("maintd.service", "ActiveState")["ActiveState"] == "active"
    mode, group = machine.run("stat", "-c", "%a %G", "/run/maintd/control.sock").stdout.split()
    assert (mode, group) == ("660", "maintd")
    # A restart keeps the socket file: clients wait in its backlog meanwhile.
    machine.run("systemctl", "restart", "maintd.service")
    assert "Maintenance mode: off" in maintctl(machine, "status")
    assert machine.run("stat", "-c", "%a %G", "/run/maintd/control.sock").stdout.split() == ["660", "maintd"]


def test_reload_rereads_pipelines_and_refuses_a_bad_file_without_stopping(machine: Machine) -> None:
    toml = config("true")
    start(machine, toml)
    pid = main_pid(machine)
    added = toml + '\n[[pipelines]]\nname = "deploy"\n[[pipelines.stages]]\nname = "s"\n'
    added += '[[pipelines.stages.jobs]]\nname = "j"\ncommand = ["true"]\n'
    machine.write("/etc/maintd/maintd.toml", added)
    machine.run("systemctl", "reload", "maintd.service")
    names = [p["name"] for p in json.loads(maintctl(machine, "pipelines", "--json"))["pipelines"]]
    assert "deploy" in names

    machine.write("/etc/maintd/maintd.toml", added + "\n[agents]\ncount = 'many'\n")
    refused = machine.run("systemctl", "reload", "maintd.service", check=False)
    assert refused.returncode != 0
    assert machine.show("maintd.service", "ActiveState")["ActiveState"] == "active"
    assert main_pid(machine) == pid
    names = [p["name"] for p in json.loads(maintctl(machine, "pipelines", "--json"))["pipelines"]]
    assert "deploy" in names
    assert "not reloaded" in machine.journal("-u", "maintd.service")


def test_stop_drains_a_building_job_which_then_passes(machine: Machine) -> None:
    start(machine, config("sleep 4; echo finished"))
    wait_building(machine)
    began = time.monotonic()
    machine.run("systemctl", "stop", "maintd.service", timeout=TIMEOUT_STOP + 10)
    took = time.monotonic() - began
    assert took < TIMEOUT_STOP
    shown = machine.show("maintd.service", "ExecMainStatus", "Result", "ActiveState")
    assert shown == {"ExecMainStatus": "0", "Result": "success", "ActiveState": "inactive"}, shown
    assert "stop stage 1/2 done: drained" in machine.journal("-u", "maintd.service")
    machine.run("systemctl", "start", "maintd.service")
    assert job_state(machine) == "passed"


def test_stop_past_the_drain_timeout_kills_every_process_of_the_job(machine: Machine) -> None:
    # The job leaves a process in a session of its own: it must go with the job.
    start(machine, config("setsid sleep 300 & sleep 300", stop_drain_timeout="2s"))
    wait_building(machine)
    assert len(machine.wait_for(lambda: len(job_pids(machine)) >= 3 and job_pids(machine), what="the job's tree")) >= 3
    cgroup = machine.show("maintd.service", "ControlGroup")["ControlGroup"]
    machine.run("systemctl", "stop", "maintd.service", timeout=TIMEOUT_STOP + 10)
    assert machine.show("maintd.service", "ExecMainStatus")["ExecMainStatus"] == "0"
    assert machine.run("pgrep", "-u", "maintd", check=False).stdout == ""
    left = machine.run("sh", "-c", f"cat /sys/fs/cgroup/unified{cgroup}/cgroup.procs 2>/dev/null", check=False).stdout
    assert left.strip() == ""
    machine.run("systemctl", "start", "maintd.service")
    assert job_state(machine) == "interrupted"


def test_watchdog_restarts_a_stuck_daemon(machine: Machine) -> None:
    # The unit's 30s, shortened for the test in a drop-in, as an operator would.
    machine.write("/etc/systemd/system/maintd.service.d/watchdog.conf", "[Service]\nWatchdogSec=3s\n")
    machine.run("systemctl", "daemon-reload")
    start(machine, config("sleep 300"))
    wait_building(machine)
    maintctl(machine, "enable", "--reason", "before the hang")
    stuck = main_pid(machine)
    machine.run("kill", "-STOP", str(stuck))
    machine.wait_for(lambda: main_pid(machine) not in (0, stuck), timeout=40, what="a new main process")
    machine.wait_for(lambda: machine.show("maintd.service", "ActiveState")["ActiveState"] == "active", what="active")
    assert "Watchdog timeout" in machine.journal("-u", "maintd.service")
    assert "Maintenance mode: off" in maintctl(machine, "status")
    assert job_state(machine) == "interrupted"


def test_hardening_leaves_the_work_possible_and_jobs_in_cgroups_of_their_own(machine: Machine) -> None:
    machine.sh(
        "mkdir -p /srv/pipes && cd /srv/pipes && git init -q -b main"
        ' && printf \'[[pipelines]]\\nname = "fromrepo"\\n[[pipelines.stages]]\\nname = "s"\\n'
        '[[pipelines.stages.jobs]]\\nname = "j"\\ncommand = ["true"]\\n\' > p.toml'
        " && git add p.toml && git -c user.email=ci@example.com -c user.name=ci commit -q -m pipes"
        " && chown -R maintd:maintd /srv/pipes"
    )
    repo = '\n[[config_repos]]\nname = "pipes"\nurl = "/srv/pipes"\npoll_interval = "1s"\n'
    start(machine, config("echo written > out.txt; cat out.txt; sleep 300", extra=repo, stop_drain_timeout="2s"))
    wait_building(machine)
    job = jobs(machine)[0]
    machine.wait_for(lambda: "written" in maintctl(machine, "logs", str(job["id"])), what="the job's log")
    found = machine.run("sh", "-c", "cat /var/lib/maintd/workspaces/build/*/test/unit/out.txt").stdout
    assert found.strip() == "written"
    machine.wait_for(
        lambda: "fromrepo" in {p["name"] for p in json.loads(maintctl(machine, "pipelines", "--json"))["pipelines"]},
        what="the config repo's pipeline",
    )
    page = machine.run("curl", "-fsS", "http://127.0.0.1:9187/api/maintenance_mode/info").stdout
    assert json.loads(page)["is_maintenance_mode"] is False

    daemon = main_pid(machine)
    service = machine.show("maintd.service", "ControlGroup")["ControlGroup"]
    own = machine.run("cat", f"/proc/{daemon}/cgroup").stdout
    daemon_cgroup = re.search(r"^0::(.*)$", own, re.M).group(1)
    for pid in job_pids(machine):
        line = re.search(r"^0::(.*)$", machine.run("cat", f"/proc/{pid}/cgroup").stdout, re.M).group(1)
        assert line.startswith(service + "/"), (line, service)
        assert line != daemon_cgroup, "a job shares the daemon's cgroup"

    machine.run("systemctl", "stop", "maintd.service", timeout=TIMEOUT_STOP + 10)
    assert machine.run("pgrep", "-u", "maintd", check=False).stdout == ""


def test_journal_has_priorities_and_the_unit_is_locked_down(machine: Machine) -> None:
    machine.write("/etc/sysusers.d/ops.conf", "g operators -\nu carol -\nm carol maintd\n")
    machine.run("systemd-sysusers")
    start(machine, config("true", extra='\n[control]\nadmin_group = "operators"\n'))
    refused = machine.run(MAINTCTL, "enable", "--reason", "not mine", user="carol", check=False)
    assert refused.returncode == 1 and "forbidden" in refused.stderr
    machine.wait_for(lambda: "forbidden" in machine.journal("-u", "maintd.service", "-p", "warning"), what="the warning")
    entries = [json.loads(line) for line in machine.journal("-u", "maintd.service", "-o", "json").splitlines()]
    warned = [e for e in entries if "forbidden" in str(e.get("MESSAGE"))]
    assert warned and all(e["PRIORITY"] == "4" for e in warned), warned

    out = machine.run("systemd-analyze", "security", "--no-pager", "maintd.service", check=False).stdout
    match = re.search(r"Overall exposure level for maintd\.service: (\d+(?:\.\d+)?)", out)
    assert match, out
    assert float(match.group(1)) <= 2.0, out


def test_only_the_maintd_group_reaches_the_socket(machine: Machine) -> None:
    machine.write("/etc/sysusers.d/people.conf", "u alice -\nu bob -\nm bob maintd\n")
    machine.run("systemd-sysusers")
    start(machine, config("true"))
    outsider = machine.run(MAINTCTL, "status", user="alice", check=False)
    assert outsider.returncode == 3, outsider
    assert "ermission denied" in outsider.stderr
    assert "Maintenance mode: ON" in maintctl(machine, "enable", "--reason", "bob's window", user="bob")
    assert "Maintenance mode: off" in maintctl(machine, "disable", user="bob")
    history = maintctl(machine, "history")
    assert "bob" in history
