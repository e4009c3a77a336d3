"""One budget, shorter inside than outside (issue 11): a slow or locked store ends a request
with the store's error, before the control server gives up on the actor and answers
``timeout`` while the request goes on to take effect."""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from actors import budget
from actors.messages import Enable, GetStatus
from actors.store import Store, StoreError
from actors.store_actor import StoreActor, SyncStore
from actors.supervisor_actor import SupervisorActor
from daemon import jobserver, server
from maintctl.client import Client
from tests.actors.fakes import FakeClock, FakeSink, FakeTimers


def default(fn: object, name: str) -> float:
    return inspect.signature(fn).parameters[name].default  # type: ignore[arg-type]


def test_each_wait_ends_before_the_one_outside_it() -> None:
    store_wait = default(SyncStore.__init__, "timeout")
    assert store_wait > budget.SQLITE_BUSY
    assert store_wait * budget.STORE_CALLS_BEFORE_EFFECT < server.ASK_TIMEOUT
    assert store_wait * budget.STORE_CALLS_BEFORE_EFFECT < jobserver.ASK_TIMEOUT
    assert max(server.ASK_TIMEOUT, jobserver.ASK_TIMEOUT) < default(Client.__init__, "timeout")


@pytest.fixture
def locked_store(tmp_path: Path) -> Iterator[SyncStore]:
    """A real store whose file another connection holds a write lock on."""
    path = str(tmp_path / "maintd.db")
    Store(path).close()
    ref = StoreActor.start(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    yield SyncStore(ref.proxy())
    other.rollback()
    other.close()
    pykka.ActorRegistry.stop_all()


def test_enable_on_a_locked_store_is_refused_within_the_servers_wait_and_maintenance_stays_off(
    locked_store: SyncStore,
) -> None:
    sink = FakeSink()
    supervisor = SupervisorActor.start(clock=FakeClock(), timers=FakeTimers(), sink=sink, audit_log=locked_store)
    # The server's own wait: the store's refusal must come first (pykka.Timeout otherwise).
    with pytest.raises(StoreError):
        supervisor.ask(Enable(by="alice", reason="upgrade"), timeout=server.ASK_TIMEOUT)
    status = supervisor.ask(GetStatus(), timeout=5)
    assert not status.maintenance.enabled and status.maintenance.state == "normal"
