"""Item 7 of issue 9: bad input never takes the configuration down.

The material subsystem, the scheduler and the config guard as real actors under the real
supervisor, on a real store actor over a SQLite file; only the process port (git) and the
timers are fakes. A config repository's file of 4 KiB of nested arrays is skipped with a
warning (the config guard used to fail with RecursionError, restart empty, and lose every
config-repo pipeline and every pause); a config guard that fails for any other reason comes
back with every repository's pipelines and with the pipelines it had paused.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.config_guard import ConfigGuardCore, SetPipelinePaused
from actors.definitions import MaterialDef
from actors.errors import Conflict
from actors.jobs import FilesFetched, PollFinished
from actors.materials import ConfigRepoFiles, MaterialsCore
from actors.messages import GetInfo, GetStatus
from actors.peers import Peers
from actors.runs import Trigger
from actors.scheduler import SchedulerCore
from actors.schema import MIGRATIONS, SCHEMA_VERSION
from actors.store import Store
from actors.store_actor import StoreActor, SyncStore
from actors.supervisor_actor import SupervisorActor
from tests.actors.fakes import Explode, FakeClock, FakeSink, FakeTimers
from tests.conftest import wait_for

ASK = 5.0
DEEP = "x = " + "[" * 2000 + "]" * 2000 + "\n"  # 4 KiB


def pipeline_toml(name: str) -> str:
    return (
        f'[[pipelines]]\nname = "{name}"\n[[pipelines.stages]]\nname = "s"\n'
        '[[pipelines.stages.jobs]]\nname = "j"\ncommand = ["true"]\n'
    )


class Git:
    """The process port: each config repo is a revision and its files, changed by the test."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: dict[str, tuple[str, dict[str, str]]] = {}

    def set(self, key: str, revision: str, files: dict[str, str]) -> None:
        with self.lock:
            self.repos[key] = (revision, files)

    def poll_material(self, reply_to: Any, key: str, url: str, branch: str, timeout: float) -> None:
        with self.lock:
            revision = self.repos[key][0]
        reply_to.tell(PollFinished(key=key, revision=revision))

    def fetch_files(self, reply_to: Any, key: str, url: str, revision: str, timeout: float) -> None:
        with self.lock:
            _, files = self.repos[key]
        reply_to.tell(FilesFetched(key=key, revision=revision, files=dict(files)))


class Guard(ConfigGuardCore):
    def handle(self, message: Any) -> Any:
        if isinstance(message, Explode):
            raise RuntimeError("boom")
        return super().handle(message)


REPOS = [MaterialDef(name=n, url=f"/srv/git/{n}.git") for n in ("good", "pipes")]


class World:
    def __init__(self, db: Path) -> None:
        self.clock, self.timers, self.sink, self.git = FakeClock(), FakeTimers(), FakeSink(), Git()
        self.store = SyncStore(StoreActor.start(str(db)).proxy())
        self.peers = Peers()
        self.git.set("config:good", "a" * 40, {"good.toml": pipeline_toml("from-good")})
        self.git.set("config:pipes", "b" * 40, {"a.toml": pipeline_toml("from-pipes")})
        self.supervisor = SupervisorActor.start(
            clock=self.clock, timers=self.timers, sink=self.sink, restart_delay=0.5, peers=self.peers,
            builtins=(("materials", self.materials), ("scheduler", self.scheduler), ("config", self.config)),
        )  # fmt: skip
        self.supervisor.ask(GetStatus(), timeout=ASK)

    def materials(self, name: str, emit: Any, items: Any) -> MaterialsCore:
        return MaterialsCore(
            name, emit, items, materials=[], config_repos=REPOS, processes=self.git, timers=self.timers,
            clock=self.clock, store=self.store, peers=self.peers,
        )  # fmt: skip

    def scheduler(self, name: str, emit: Any, items: Any) -> SchedulerCore:
        return SchedulerCore(
            name, emit, items, pipelines=[], store=self.store, peers=self.peers, timers=self.timers,
            clock=self.clock, work_root="/srv/maintd",
        )  # fmt: skip

    def config(self, name: str, emit: Any, items: Any) -> Guard:
        return Guard(name, emit, items, pipelines=[], materials=set(), store=self.store, peers=self.peers, clock=self.clock)

    def ref(self, name: str) -> Any:
        return wait_for(lambda: self.peers.current(name), ASK, f"{name} running")

    def poll(self, repo: str) -> None:
        """One poll of ``repo``, and its files (if new) merged by the config guard."""
        self.timers.fire(f"poll:config:{repo}", self.supervisor)
        wait_for(lambda: f"poll:config:{repo}" in self.timers.armed, ASK, f"{repo} polled")  # re-armed once done
        self.ref("config").ask(GetInfo(), timeout=ASK)  # behind the files materials told it

    def pipelines(self) -> dict[str, bool]:
        return {p.name: p.paused for p in self.ref("config").ask(GetInfo(), timeout=ASK)}

    def config_state(self) -> str:
        status = self.supervisor.ask(GetStatus(), timeout=ASK)
        return next(s.state for s in status.subsystems if s.name == "config")

    def restart_config(self) -> None:
        old = self.ref("config")
        old.tell(Explode())
        self.sink.wait(lambda s: any(x.name == "config" and x.state == "failed" for x in s.subsystems), what="config failed")
        self.timers.fire("restart:config", self.supervisor)
        self.sink.wait(lambda s: any(x.name == "config" and x.state != "failed" for x in s.subsystems), what="config back")
        wait_for(lambda: self.peers.current("config") not in (None, old), ASK, "a new config actor")


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path / "maintd.db")
    yield world
    pykka.ActorRegistry.stop_all()


def test_a_deeply_nested_file_is_skipped_and_no_pipeline_or_pause_is_lost(w: World, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="maintd.config")
    w.poll("good")
    w.poll("pipes")
    assert w.pipelines() == {"from-good": False, "from-pipes": False}
    w.ref("config").ask(SetPipelinePaused(pipeline="from-good", paused=True, by="alice"), timeout=ASK)

    w.git.set("config:pipes", "c" * 40, {"a.toml": pipeline_toml("from-pipes"), "deep.toml": DEEP})
    w.poll("pipes")
    assert w.config_state() != "failed"
    assert w.pipelines() == {"from-good": True, "from-pipes": False}
    assert f"config repo pipes, deep.toml at {'c' * 12}: arrays or tables nested too deeply; file skipped" in caplog.text
    with pytest.raises(Conflict, match="paused"):
        w.ref("scheduler").ask(Trigger(pipeline="from-good", by="alice"), timeout=ASK)


def test_a_config_guard_that_fails_comes_back_with_every_repo_and_every_pause(w: World) -> None:
    w.poll("good")
    w.poll("pipes")
    w.ref("config").ask(SetPipelinePaused(pipeline="from-pipes", paused=True, by="alice"), timeout=ASK)
    w.restart_config()
    # the material subsystem sends the files of every repo again: no new commit needed
    wait_for(lambda: w.pipelines() == {"from-good": False, "from-pipes": True}, ASK, "both repos back, the pause kept")
    with pytest.raises(Conflict, match="paused"):
        w.ref("scheduler").ask(Trigger(pipeline="from-pipes", by="alice"), timeout=ASK)
    assert w.ref("scheduler").ask(Trigger(pipeline="from-good", by="alice"), timeout=ASK)["counter"] == 1
    entries = [(a.action, a.by, a.target) for a in w.store.audit_entries()]
    assert ("pipeline_pause", "alice", "from-pipes") in entries  # audited as before


def test_one_repo_that_cannot_be_read_keeps_its_last_good_set_and_leaves_the_others(tmp_path: Path, caplog: Any) -> None:
    store = Store(str(tmp_path / "maintd.db"))

    class Peers:
        def tell(self, name: str, message: Any) -> None:
            pass

    guard = ConfigGuardCore(
        "config", lambda _m: None, pipelines=[], materials=set(), store=store, peers=Peers(), clock=FakeClock()
    )
    guard.start()
    guard.handle(ConfigRepoFiles(repo="good", revision="a" * 40, files={"g.toml": pipeline_toml("from-good")}))
    guard.handle(ConfigRepoFiles(repo="pipes", revision="b" * 40, files={"p.toml": pipeline_toml("from-pipes")}))

    class Broken(dict):  # a repository whose files cannot even be listed
        def items(self) -> Any:
            raise OSError("gone")

    caplog.set_level(logging.WARNING, logger="maintd.config")
    guard.handle(ConfigRepoFiles(repo="pipes", revision="c" * 40, files=Broken()))
    assert {p.name for p in guard.info()} == {"from-good", "from-pipes"}
    assert (
        "config repo pipes at cccccccccccc could not be read (OSError: gone); its last good set (1 pipeline(s)) is kept"
        in caplog.text
    )


def test_the_pause_table_is_added_to_a_store_of_the_previous_schema(tmp_path: Path) -> None:
    path = tmp_path / "maintd.db"
    db = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0]:  # the schema of the version before: no pause table
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO audit (at, action, by) VALUES (1.0, 'enable', 'bob')")
    db.close()

    store = Store(str(path))
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 2
    assert [(a.action, a.by) for a in store.audit_entries()] == [("enable", "bob")]
    assert store.paused_pipelines() == []
    store.set_pipeline_paused("build", True, "alice", 2.0)
    store.set_pipeline_paused("deploy", True, "alice", 3.0)
    store.set_pipeline_paused("build", False, "carol", 4.0)
    store.close()
    again = Store(str(path))
    assert again.paused_pipelines() == ["deploy"]
    assert [(a.action, a.by, a.target) for a in again.audit_entries()][1:] == [
        ("pipeline_pause", "alice", "build"),
        ("pipeline_pause", "alice", "deploy"),
        ("pipeline_unpause", "carol", "build"),
    ]
