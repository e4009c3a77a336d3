"""Compare-and-set on maintenance: ``enable --if-version`` and ``disable --if-drain-id``, and
the version that counts every turn on or off, kept across restarts by the real store.
Driven on :class:`~actors.supervisor.SupervisorCore` without threads."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from actors.errors import Conflict
from actors.messages import Disable, Enable
from actors.schema import MIGRATIONS, MaintenanceRow
from actors.store import Store, StoreError
from tests.actors.core_world import World


@pytest.fixture
def world() -> World:
    return World.reported()


def test_each_turn_on_or_off_moves_the_version_and_the_drains_moves_do_not(world: World) -> None:
    assert world.core.status().maintenance.version == 0
    world.core.enable(Enable(by="alice"))
    world.pause_and_drain("scheduler")
    world.pause_and_drain("agents")
    assert world.state() == "drained" and world.core.status().maintenance.version == 1
    world.core.disable(Disable(by="alice"))
    assert world.core.status().maintenance.version == 2
    assert [(e.action, e.version) for e in world.core.history] == [("enable", 1), ("all_drained", 1), ("disable", 2)]
    assert world.sink.events[-1].maintenance.version == 2


def test_enable_if_version_is_taken_when_nothing_changed(world: World) -> None:
    world.core.enable(Enable(by="alice"))
    world.core.disable(Disable(by="alice"))
    info = world.core.enable(Enable(by="bob", if_version=2))
    assert info.enabled and info.version == 3


def test_enable_if_version_is_refused_when_someone_turned_it_on_and_off_meanwhile(world: World) -> None:
    seen = world.core.status().maintenance.version
    world.core.enable(Enable(by="alice"))
    world.core.disable(Disable(by="alice"))
    world.audits.clear()
    with pytest.raises(Conflict, match="version is 2, not 0"):
        world.core.enable(Enable(by="bob", if_version=seen))
    assert world.state() == "normal" and world.audits == [] and world.core.version == 2


def test_disable_if_drain_id_turns_off_only_that_drain(world: World) -> None:
    mine = world.core.enable(Enable(by="alice")).drain_id
    world.core.disable(Disable(by="alice"))
    theirs = world.core.enable(Enable(by="bob")).drain_id
    world.audits.clear()
    with pytest.raises(Conflict, match=f"the drain now on is {theirs}, not {mine}"):
        world.core.disable(Disable(by="alice", if_drain_id=mine))
    assert world.state() == "draining" and world.core.drain_id == theirs and world.audits == []
    info = world.core.disable(Disable(by="bob", if_drain_id=theirs))
    assert not info.enabled and world.audits == [("disable", "bob")]


def test_disable_if_drain_id_when_maintenance_is_off_is_a_conflict(world: World) -> None:
    mine = world.core.enable(Enable(by="alice")).drain_id
    world.core.disable(Disable(by="bob"))
    with pytest.raises(Conflict, match="maintenance mode is not on"):
        world.core.disable(Disable(by="alice", if_drain_id=mine))


def test_a_turn_whose_version_cannot_be_recorded_does_not_happen(world: World) -> None:
    def refuse(row: MaintenanceRow, **audit: str | None) -> None:
        raise StoreError("disk I/O error")

    world.core.save_maintenance = refuse
    with pytest.raises(StoreError):
        world.core.enable(Enable(by="alice"))
    assert world.state() == "normal" and world.core.version == 0 and world.core.drain_id is None


def store_world(path: Path) -> tuple[World, Store]:
    """A world whose core records its versions in a real store, restored as the daemon does at start-up."""
    store = Store(str(path))
    world = World()
    world.core.save_maintenance = store.save_maintenance
    world.core.restore(store.maintenance())
    return world, store


def test_the_version_and_the_drain_are_kept_in_the_store_across_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "maintd.db"
    world, store = store_world(db)
    world.core.enable(Enable(by="alice"))
    world.core.disable(Disable(by="alice"))
    world.core.enable(Enable(by="bob", ttl_seconds=3600, reason="upgrade"))
    drain = world.core.drain_id
    store.close()
    reopened = Store(str(db))
    row = reopened.maintenance()
    assert row is not None and (row.version, row.enabled, row.drain_id, row.by) == (3, True, drain, "bob")
    assert row.ttl_end == world.clock.t + 3600
    # Each turn's audit entry is written in the same transaction as its version.
    audit = [(a.action, a.by, a.reason, a.detail) for a in reopened.audit_entries()]
    assert audit == [("enable", "alice", None, None), ("disable", "alice", None, None), ("enable", "bob", "upgrade", "ttl 3600s")]
    reopened.close()

    # The daemon restarts: maintenance is not restored, and that is a turn of its own, so a
    # compare-and-set against what was seen before the restart is refused.
    after, store2 = store_world(db)
    assert after.state() == "normal" and after.core.status().maintenance.version == 4
    ended = store2.audit_entries()[-1]
    assert (ended.action, ended.by) == ("disable", "maintd") and "not restored" in (ended.reason or "")
    with pytest.raises(Conflict):
        after.core.enable(Enable(by="bob", if_version=3))
    assert after.core.enable(Enable(by="bob", if_version=4)).version == 5
    store2.close()
    again = Store(str(db)).maintenance()
    assert again is not None and again.version == 5 and again.enabled


def test_a_restart_after_maintenance_was_off_keeps_the_version(tmp_path: Path) -> None:
    db = tmp_path / "maintd.db"
    world, store = store_world(db)
    world.core.enable(Enable(by="alice"))
    world.core.disable(Disable(by="alice"))
    store.close()
    after, _ = store_world(db)
    assert after.core.version == 2
    assert after.core.enable(Enable(by="carol", if_version=2)).version == 3


def test_a_store_of_schema_2_gains_the_maintenance_table_and_keeps_its_pauses(tmp_path: Path) -> None:
    db = tmp_path / "maintd.db"
    old = sqlite3.connect(db)
    for statements in MIGRATIONS[:2]:
        for statement in statements:
            old.execute(statement)
    old.execute("INSERT INTO paused_pipelines (pipeline, by, at) VALUES ('build', 'alice', 1.0)")
    old.execute("PRAGMA user_version = 2")
    old.commit()
    old.close()
    store = Store(str(db))
    assert store.maintenance() is None and store.paused_pipelines() == ["build"]
    world = World()
    world.core.save_maintenance = store.save_maintenance
    world.core.restore(store.maintenance())
    world.core.enable(Enable(by="alice"))
    row = store.maintenance()
    assert row is not None and row.version == 1 and row.enabled
