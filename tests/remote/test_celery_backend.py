"""maintd with ``[agents] backend = "celery"``: the drain, exact, for jobs on other hosts.

Real parts: a real ``redis-server`` (the broker and result backend), real ``maintd-agent``
workers (two, with different names and work dirs, for two hosts), a real maintd and
maintctl. Jobs wait for a release file the test makes, so the test decides when work
ends; every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import Daemon, alive, wait_for

HEARTBEAT = "300ms"
LOST = "3s"


class Remote:
    """A maintd on the Celery backend, its broker, and the workers standing for hosts."""

    def __init__(self, tmp: Path, redis_server: Any, start_worker: Any) -> None:
        self.tmp = tmp
        self.redis = redis_server
        self.start_worker = start_worker
        self.release = tmp / "release"
        self.release.mkdir()
        self.pids = tmp / "pids"
        self.pids.mkdir()
        self.workers: dict[str, Any] = {}
        self.d: Daemon | None = None

    def worker(self, name: str, slots: int = 1) -> Any:
        w = self.start_worker(name, broker_url=self.redis.url, slots=slots, work_dir=self.tmp / f"host-{name}", heartbeat=0.3)
        self.workers[name] = w
        return w

    def job(self, name: str, body: str = "") -> str:
        wait = f'while [ ! -e "{self.release}/{name}" ]; do sleep 0.02; done'
        return (
            f'[[pipelines.stages.jobs]]\nname = "{name}"\n'
            f"shell = '''echo started $GO_PIPELINE_NAME/$GO_PIPELINE_COUNTER/$GO_JOB_NAME in $PWD; {body}{wait}; "
            f"echo finished {name}; exit ${{EXIT_CODE:-0}}'''\n"
        )

    def config(self, *jobs: str | tuple[str, str]) -> str:
        jobs_toml = "".join(self.job(j) if isinstance(j, str) else self.job(*j) for j in jobs)
        return (
            '[daemon]\nstop_drain_timeout = "1s"\n'
            '[agents]\nbackend = "celery"\ncancel_grace = "1s"\n'
            f'[celery]\nbroker = "{self.redis.url}"\nheartbeat = "{HEARTBEAT}"\nlost_timeout = "{LOST}"\n'
            '[maintenance]\nsubsystem_restart_delay = "100ms"\n'
            '[[pipelines]]\nname = "build"\n[[pipelines.stages]]\nname = "test"\n' + jobs_toml
        )

    def start(self, *jobs: str | tuple[str, str]) -> Daemon:
        self.d = Daemon(self.tmp / "maintd", config=self.config(*jobs)).start()
        return self.d

    def ctl(self, *args: str, ok: bool = True) -> Any:
        assert self.d is not None
        done = self.d.maintctl(*args)
        if ok:
            assert done.returncode == 0, done.stderr + done.stdout
        return done

    def agents(self) -> dict[str, Any]:
        return {a["name"]: a for a in json.loads(self.ctl("agents", "--json").stdout)["agents"]}

    def jobs(self) -> dict[str, Any]:
        runs = json.loads(self.ctl("runs", "--json").stdout)["runs"]
        return {j["name"]: j for r in runs for j in r["jobs"]}

    def wait_agents_idle(self, *names: str) -> None:
        wait_for(lambda: all(self.agents().get(n, {}).get("state") == "idle" for n in names), 20, f"agents {names} idle")

    def wait_job(self, name: str, predicate: Any, what: str, timeout: float = 20) -> dict[str, Any]:
        return wait_for(lambda: j if (j := self.jobs().get(name)) and predicate(j) else None, timeout, what)

    def building(self, *names: str) -> dict[str, str]:
        """Wait until each job builds on a worker that has started it; its agent (``NAME#slot``)."""
        found = {}
        for name in names:
            job = self.wait_job(name, lambda j: j["state"] == "building", f"{name} building")
            wait_for(lambda n=name: "started build/" in self.logs(n), 20, f"{name}'s output in its log")
            found[name] = job["agent"]
        return found

    def logs(self, name: str) -> str:
        job = self.jobs()[name]
        return self.ctl("logs", str(job["id"])).stdout

    def let_go(self, name: str) -> None:
        (self.release / name).touch()

    def safe(self) -> bool:
        assert self.d is not None
        return bool(self.d.status()["maintenance"]["safe_to_restart"])


@pytest.fixture
def remote(tmp_path: Path, redis_server: Any, start_worker: Any) -> Any:
    r = Remote(tmp_path, redis_server, start_worker)
    yield r
    if r.d is not None:
        r.d.stop()


def test_the_drain_waits_for_every_remote_job_and_is_safe_only_after_the_last_ends(remote: Remote) -> None:
    remote.worker("w1")
    remote.worker("w2")
    remote.start("unit", "lint")
    remote.wait_agents_idle("w1", "w2")
    remote.ctl("trigger", "build")
    on = remote.building("unit", "lint")
    assert {a.split("#")[0] for a in on.values()} == {"w1", "w2"}  # one on each host
    # each ran in its host's work dir, with the GO_* environment; its output reached the server's log
    for name, agent in on.items():
        assert f"started build/1/{name} in {remote.tmp}/host-{agent.split('#')[0]}/" in remote.logs(name)
    remote.ctl("enable", "--reason", "upgrade")
    assert not remote.safe()
    remote.let_go("unit")
    remote.wait_job("unit", lambda j: j["state"] == "passed", "unit passed")
    assert not remote.safe()  # lint still builds on the other host
    status = remote.d.status()
    assert [i["id"] for i in status["running_systems"]["building_jobs"]] == [f"agents/job-{remote.jobs()['lint']['id']}"]
    remote.let_go("lint")
    done = remote.ctl("wait", "--timeout", "20s")
    assert "Safe to restart." in done.stdout
    assert {j["state"] for j in remote.jobs().values()} == {"passed"}
    assert "finished lint" in remote.logs("lint")


def test_paused_maintd_publishes_nothing_and_idle_workers_take_nothing(remote: Remote) -> None:
    remote.worker("w1")
    remote.start("one", "two", "three")
    remote.wait_agents_idle("w1")
    remote.ctl("trigger", "build")
    remote.building("one")  # one slot: the others wait in maintd, not on the broker
    remote.ctl("enable")
    client = remote.redis.client()
    assert client.llen("maintd.w1") == 0  # never a backlog on the broker
    remote.let_go("one")
    remote.let_go("two")
    remote.let_go("three")
    assert "Safe to restart." in remote.ctl("wait", "--timeout", "20s").stdout
    jobs = remote.jobs()
    assert jobs["one"]["state"] == "passed" and {jobs["two"]["state"], jobs["three"]["state"]} == {"scheduled"}
    tasks = [k for k in client.scan_iter("celery-task-meta-*")]
    assert len(tasks) == 1 and client.llen("maintd.w1") == 0  # only the first job's task was ever published
    assert remote.agents()["w1"]["state"] == "paused"
    remote.ctl("disable")
    remote.wait_job("three", lambda j: j["state"] == "passed", "the rest run once maintenance is off")


def test_a_cancel_kills_the_remote_job_s_whole_tree_and_it_is_cancelled_once_its_end_is_confirmed(remote: Remote) -> None:
    remote.worker("w1")
    pidfile = remote.pids / "escaped"
    body = f"setsid sh -c 'trap \"\" TERM; echo $$ > {pidfile}; while :; do sleep 0.05; done' & "
    remote.start(("tree", body))  # a child that leaves its session and ignores SIGTERM
    remote.wait_agents_idle("w1")
    remote.ctl("trigger", "build")
    remote.building("tree")
    escaped = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the escaped child's pid"))
    assert alive(escaped)
    job_id = remote.jobs()["tree"]["id"]
    remote.ctl("cancel", f"agents/job-{job_id}")
    job = remote.wait_job("tree", lambda j: j["state"] == "cancelled", "the job cancelled", timeout=30)
    assert job["cancelled_by"]
    assert not alive(escaped)  # the whole tree went before the job was recorded cancelled


def test_a_worker_killed_mid_job_is_lost_and_its_job_rescheduled_and_run_on_the_other(remote: Remote) -> None:
    remote.worker("w1")
    remote.worker("w2")
    remote.start("deploy")
    remote.wait_agents_idle("w1", "w2")
    remote.ctl("trigger", "build")
    first = remote.building("deploy")["deploy"].split("#")[0]
    other = "w2" if first == "w1" else "w1"
    remote.ctl("enable")
    remote.workers[first].kill9()
    # until lost_timeout its job blocks; then it is rescheduled, and in maintenance it waits
    job = remote.wait_job("deploy", lambda j: j["state"] == "scheduled", "the job rescheduled", timeout=20)
    assert job["agent"] is None
    assert remote.agents()[first]["state"] == "lost"
    history = remote.ctl("history").stdout
    assert "job_rescheduled" in history and f"agent {first} lost" in history
    remote.ctl("disable")
    job = remote.wait_job("deploy", lambda j: j["state"] == "building", "the job running again")
    assert job["agent"].startswith(f"{other}#")
    wait_for(lambda: f"host-{other}/" in remote.logs("deploy"), 20, "the second attempt's output")
    remote.let_go("deploy")
    remote.wait_job("deploy", lambda j: j["state"] == "passed", "the job passed on the other host")


def test_maintd_killed_mid_job_finds_it_still_building_and_records_its_real_result(remote: Remote) -> None:
    remote.worker("w1")
    remote.start("migrate")
    remote.wait_agents_idle("w1")
    remote.ctl("trigger", "build")
    remote.building("migrate")
    job_id = remote.jobs()["migrate"]["id"]
    assert remote.d is not None and remote.d.proc is not None
    remote.d.proc.send_signal(signal.SIGKILL)
    remote.d.proc.wait(10)
    remote.d = Daemon(remote.tmp / "maintd", config=remote.config("migrate")).start()
    job = remote.jobs()["migrate"]
    assert job["state"] == "building", job  # not interrupted: it runs on its host
    remote.ctl("enable")
    assert not remote.safe()
    remote.let_go("migrate")
    remote.wait_job("migrate", lambda j: j["state"] == "passed", "its real result")
    assert "finished migrate" in remote.logs("migrate")
    assert "Safe to restart." in remote.ctl("wait", "--timeout", "20s").stdout
    assert remote.jobs()["migrate"]["id"] == job_id  # the same job, not a new one


def test_the_broker_stopped_mid_drain_is_never_safe_and_nothing_is_lost_when_it_returns(remote: Remote) -> None:
    remote.worker("w1")
    remote.start("backup")
    remote.wait_agents_idle("w1")
    remote.ctl("trigger", "build")
    remote.building("backup")
    remote.ctl("enable")
    remote.redis.stop()
    status = remote.d.wait_status(
        lambda s: (s.get("agents_backend") or {}).get("state") == "unavailable" and s["running_systems"]["other"],
        "the backend shown unavailable, and an item holding the restart",
    )
    other = status["running_systems"]["other"]
    assert [i["kind"] for i in other] == ["backend_unavailable"] and "unknown" in other[0]["description"]
    remote.let_go("backup")  # it ends on its host while the broker is down
    # status and the maintenance requests still answer; it is not safe
    assert "maintenance" in remote.d.status()
    assert remote.ctl("status").returncode == 0
    why = remote.ctl("why", ok=False).stdout
    assert "broker" in why and "unavailable" in why
    assert not remote.safe()
    import httpx

    metrics = httpx.get(f"{remote.d.http_url()}/metrics", timeout=10).text
    assert 'maintd_agents_backend_up{backend="celery"} 0.0' in metrics
    page = httpx.get(f"{remote.d.http_url()}/", timeout=10).text
    assert 'id="agents-backend"' in page and "unavailable" in page
    assert "Remote agents: celery" in remote.ctl("status").stdout
    remote.redis.start()
    remote.wait_job("backup", lambda j: j["state"] == "passed", "its result, once the broker is back", timeout=40)
    assert "finished backup" in remote.logs("backup")
    assert "Safe to restart." in remote.ctl("wait", "--timeout", "30s").stdout


def test_one_agent_disabled_finishes_its_job_and_takes_no_more_while_the_other_does(remote: Remote) -> None:
    from remote.contract import make_app

    w1, w2 = remote.worker("w1"), remote.worker("w2")
    remote.start("a", "b", "c")
    remote.wait_agents_idle("w1", "w2")
    remote.ctl("trigger", "build")
    on = remote.building("a", "b")
    x = on["a"].split("#")[0]
    y = "w2" if x == "w1" else "w1"
    node = {"w1": w1.node, "w2": w2.node}
    assert "disabled: it finishes its job" in remote.ctl("agent", "disable", x).stdout
    app = make_app(remote.redis.url)

    def queues(name: str) -> list[str]:
        answer = app.control.inspect(destination=[node[name]], timeout=1).active_queues() or {}
        return [q["name"] for q in answer.get(node[name], [])]

    wait_for(lambda: queues(x) == [], 10, f"{x}'s consumer cancelled (Celery's cancel_consumer)")
    assert queues(y) == [f"maintd.{y}"]
    remote.let_go("a")
    remote.wait_job("a", lambda j: j["state"] == "passed", "the disabled agent's job finishes")
    assert remote.agents()[x]["state"] == "disabled"
    assert remote.jobs()["c"]["state"] == "scheduled"  # not on the disabled agent
    remote.let_go("b")
    job = remote.wait_job("c", lambda j: j["state"] == "building", "c on the other agent")
    assert job["agent"].startswith(f"{y}#")
    # enabling is refused in maintenance, and audited either way
    remote.ctl("enable")
    refused = remote.ctl("agent", "enable", x, ok=False)
    assert refused.returncode != 0 and "maintenance mode is on" in refused.stderr
    remote.ctl("disable")
    remote.ctl("agent", "enable", x)
    wait_for(lambda: queues(x) == [f"maintd.{x}"], 10, f"{x}'s consumer back (add_consumer)")
    history = remote.ctl("history").stdout
    assert "agent_disable" in history and "agent_enable" in history
    remote.let_go("c")
    remote.wait_job("c", lambda j: j["state"] == "passed", "c passed")
    app.close()


def test_a_broker_with_a_password_from_files_works_and_the_password_is_never_logged(remote: Remote) -> None:
    secret = "s3cret-Pa55 with space"
    password_file = remote.tmp / "broker.password"
    password_file.write_text(secret + "\n")
    password_file.chmod(0o600)
    remote.redis.client().config_set("requirepass", secret)
    with_password = remote.redis.url.replace("redis://", f"redis://:{quote(secret, safe='')}@")
    remote.workers["w1"] = remote.start_worker("w1", broker_url=with_password, work_dir=remote.tmp / "h1")
    config = remote.config("job").replace("[celery]\n", f'[celery]\npassword_file = "{password_file}"\n')
    remote.d = Daemon(remote.tmp / "maintd", config=config).start()
    remote.wait_agents_idle("w1")
    remote.ctl("trigger", "build")
    remote.building("job")
    remote.let_go("job")
    remote.wait_job("job", lambda j: j["state"] == "passed", "the job passed")
    status = remote.ctl("status").stdout
    assert "Remote agents: celery" in status and "available" in status
    for text in (remote.d.log_text(), status, remote.ctl("status", "--json").stdout, remote.workers["w1"].log_text()):
        assert "s3cret" not in text and quote(secret, safe="") not in text
    remote.d.stop()
    import redis

    redis.Redis.from_url(with_password).config_set("requirepass", "")  # the fixture's teardown talks without it


def test_the_broker_unreachable_at_start_up_is_said_and_the_daemon_serves(remote: Remote) -> None:
    remote.redis.stop()
    d = remote.start("job")
    status = d.wait_status(lambda s: (s.get("agents_backend") or {}).get("state") == "unavailable", "unavailable")
    assert status["maintenance"]["enabled"] is False
    remote.ctl("enable")
    assert "Safe to restart." in remote.ctl("wait", "--timeout", "10s").stdout  # nothing remote is held
    remote.ctl("disable")
    remote.redis.start()
    d.wait_status(lambda s: (s.get("agents_backend") or {}).get("state") == "available", "available", timeout=20)


def test_a_task_left_on_a_lost_worker_s_queue_expires_so_the_job_never_runs_twice(remote: Remote) -> None:
    w1 = remote.worker("w1")
    runs = remote.tmp / "runs.txt"
    remote.start(("once", f'echo "$PWD" >> {runs}; '))
    remote.wait_agents_idle("w1")
    os.kill(w1.proc.pid, signal.SIGSTOP)  # frozen: heard from a moment ago, so maintd publishes to it
    try:
        remote.ctl("trigger", "build")
        # it never takes the task: after lost_timeout it is lost and the job rescheduled
        remote.wait_job(
            "once", lambda j: j["state"] == "scheduled" and "rescheduled" in remote.ctl("history").stdout, "rescheduled"
        )
        remote.worker("w2")
        job = remote.wait_job("once", lambda j: j["state"] == "building", "the job on w2")
        assert job["agent"].startswith("w2#")
    finally:
        os.kill(w1.proc.pid, signal.SIGCONT)
    client = remote.redis.client()
    # w1 wakes up, takes its stale task from its queue and drops it as expired
    wait_for(lambda: client.llen("maintd.w1") == 0, 20, "w1 to take the stale task")
    stale = wait_for(
        lambda: [k for k in client.scan_iter("celery-task-meta-*") if b'"REVOKED"' in (client.get(k) or b"")],
        20,
        "the stale task marked revoked (expired)",
    )
    assert len(stale) == 1
    remote.let_go("once")
    remote.wait_job("once", lambda j: j["state"] == "passed", "the job passed on w2")
    assert runs.read_text().count("\n") == 1 and "host-w2" in runs.read_text()


def test_a_remote_job_that_ended_while_maintd_was_down_gets_its_real_result_and_whole_log(remote: Remote) -> None:
    remote.worker("w1")
    remote.start(("report", "EXIT_CODE=3; "))
    remote.wait_agents_idle("w1")
    remote.ctl("trigger", "build")
    remote.building("report")
    assert remote.d is not None and remote.d.proc is not None
    remote.d.proc.send_signal(signal.SIGKILL)
    remote.d.proc.wait(10)
    client = remote.redis.client()
    remote.let_go("report")
    wait_for(
        lambda: [k for k in client.scan_iter("celery-task-meta-*") if b'"SUCCESS"' in (client.get(k) or b"")],
        20,
        "the job's end stored while maintd is down",
    )
    remote.d = Daemon(remote.tmp / "maintd", config=remote.config(("report", "EXIT_CODE=3; "))).start()
    job = remote.wait_job("report", lambda j: j["state"] != "building", "its result")
    assert (job["state"], job["returncode"]) == ("failed", 3)  # its real result, not interrupted
    log = remote.logs("report")
    assert "started build/1/report" in log and "finished report" in log


def test_a_worker_restarted_under_the_same_name_mid_job_is_found_out_and_the_job_run_again(remote: Remote) -> None:
    w1 = remote.worker("w1")
    runs = remote.tmp / "runs.txt"
    remote.start(("again", f'echo "$$" >> {runs}; '))
    remote.wait_agents_idle("w1")
    remote.ctl("trigger", "build")
    remote.building("again")
    first = int(runs.read_text().split()[0])
    w1.kill9()  # its pool goes with it; back at once, well within lost_timeout, under the same name
    os.kill(first, signal.SIGKILL)  # (what the host's reboot would do to the job's processes)
    remote.worker("w1")
    # the worker answers `inspect` without the job, and there is no result: the job runs again
    wait_for(lambda: runs.read_text().count("\n") == 2, 30, "the job started a second time")
    assert "job_rescheduled" in remote.ctl("history").stdout
    remote.let_go("again")
    job = remote.wait_job("again", lambda j: j["state"] == "passed", "the second attempt passed")
    assert job["agent"] == "w1#1"


def test_maintctl_logs_follow_streams_a_remote_job_s_output_until_it_ends(remote: Remote) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    remote.worker("w1")
    remote.start(("chatty", "for i in 1 2 3; do echo line $i; done; "))
    remote.wait_agents_idle("w1")
    remote.ctl("trigger", "build")
    remote.building("chatty")
    job_id = remote.jobs()["chatty"]["id"]
    assert remote.d is not None
    env = {**os.environ, "MAINTD_SOCKET": str(remote.d.socket)}
    follow = subprocess.Popen(
        [sys.executable, "-m", "maintctl", "logs", "--follow", str(job_id)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        remote.let_go("chatty")
        out, err = follow.communicate(timeout=30)  # it ends by itself once the job has ended
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0, err
    assert ("line 3" in out and out.rstrip().endswith("finished chatty")) or "finished chatty" in out


def test_a_forged_end_entry_in_a_job_s_stream_ends_it_failed_with_the_reason_and_maintd_goes_on(remote: Remote) -> None:
    remote.worker("w1")
    remote.start("victim", "next")
    remote.wait_agents_idle("w1")
    remote.ctl("trigger", "build")
    remote.building("victim")
    client = remote.redis.client()
    (stream,) = [k for k in client.scan_iter("maintd:log:*")]
    client.xadd(stream, {"end": b"{not json"})  # whoever can write to the broker
    job = remote.wait_job("victim", lambda j: j["state"] == "failed", "the job ended failed")
    import sqlite3

    with sqlite3.connect(remote.d.state / "maintd.db") as db:  # the job's state change says why
        (detail,) = db.execute("SELECT detail FROM job_events WHERE job_id = ? AND state = 'failed'", (job["id"],)).fetchone()
    assert "end entry" in detail and "cannot be read" in detail
    # maintd goes on: the next job runs on that slot once the worker has really freed it
    remote.let_go("victim")
    remote.let_go("next")
    remote.wait_job("next", lambda j: j["state"] == "passed", "the next job passed")
    assert remote.jobs()["victim"]["state"] == "failed"  # the real end, later, changes nothing
