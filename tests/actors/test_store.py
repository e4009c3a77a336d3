"""The SQLite store on a real file: lifecycles, refusals, recovery, errors, and the actor over it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.errors import MaintdError
from actors.future import CallbackFuture
from actors.jobs import JobState
from actors.schema import RESTART_DETAIL, SCHEMA_VERSION
from actors.store import Store, StoreError
from actors.store_actor import StoreActor, SyncStore

T0 = 1_700_000_000.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "maintd.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    db_path.parent.mkdir()
    s = Store(str(db_path))
    yield s
    s.close()


def new_run(store: Store, pipeline: str = "build", trigger: str = "material", revisions: dict[str, str] | None = None) -> int:
    counter = store.next_counter(pipeline)
    return store.create_run(pipeline, counter, trigger, "maintd", revisions or {"repo": "abc123"}, T0)


def new_job(store: Store, run_id: int, name: str = "unit", stage: str = "test", index: int = 0, at: float = T0) -> int:
    (job_id,) = store.create_jobs(run_id, "build", 1, stage, index, ((name, f"/state/logs/{name}.log"),), at)
    return job_id


def test_counters_count_per_pipeline(store: Store) -> None:
    assert store.next_counter("build") == 1
    store.create_run("build", 1, "user", "alice", {}, T0)
    store.create_run("build", 2, "timer", "maintd", {}, T0)
    assert store.next_counter("build") == 3
    assert store.next_counter("deploy") == 1


def test_a_run_and_its_jobs_go_through_their_lifecycle_with_an_event_per_change(store: Store) -> None:
    run_id = new_run(store, revisions={"repo": "abc123", "tools": "def456"})
    unit = new_job(store, run_id, "unit")
    lint = new_job(store, run_id, "lint", at=T0 + 0.5)
    assert [j.id for j in store.scheduled_jobs()] == [unit, lint]

    store.set_job_state(unit, JobState.BUILDING, T0 + 1, agent="agent-1", detail="pid 42")
    store.set_job_state(unit, JobState.PASSED, T0 + 5, returncode=0)
    store.set_job_state(lint, "building", T0 + 2, agent="agent-2")
    store.set_job_state(lint, JobState.FAILED, T0 + 3, returncode=2, detail="exit 2")
    assert store.finish_run(run_id, "failed", T0 + 6) is True
    assert store.finish_run(run_id, "passed", T0 + 7) is False  # an ended run stays as it ended

    row = store.job(unit)
    assert row is not None
    assert (row.state, row.agent, row.returncode) == ("passed", "agent-1", 0)
    assert (row.scheduled_at, row.started_at, row.finished_at) == (T0, T0 + 1, T0 + 5)
    assert row.log_path == "/state/logs/unit.log"
    assert [(e.state, e.at, e.detail) for e in store.job_events(unit)] == [
        ("scheduled", T0, None),
        ("building", T0 + 1, "pid 42"),
        ("passed", T0 + 5, None),
    ]
    assert [e.state for e in store.job_events(lint)] == ["scheduled", "building", "failed"]

    (run,) = store.recent_runs()
    assert (run.id, run.pipeline, run.counter, run.trigger, run.triggered_by) == (run_id, "build", 1, "material", "maintd")
    assert (run.state, run.created_at, run.finished_at) == ("failed", T0, T0 + 6)
    assert run.revisions == {"repo": "abc123", "tools": "def456"}
    assert [(j.name, j.state, j.returncode) for j in run.jobs] == [("unit", "passed", 0), ("lint", "failed", 2)]
    assert store.jobs_of_run(run_id) == list(run.jobs)
    assert store.scheduled_jobs() == []
    assert store.job(9999) is None


def test_recent_runs_are_newest_first_limited_and_filtered_by_pipeline(store: Store) -> None:
    ids = [new_run(store, "build") for _ in range(3)] + [new_run(store, "deploy")]
    assert [r.id for r in store.recent_runs()] == ids[::-1]
    assert [r.counter for r in store.recent_runs(limit=2, pipeline="build")] == [3, 2]
    assert [r.pipeline for r in store.recent_runs(pipeline="deploy")] == ["deploy"]
    assert store.recent_runs(pipeline="nothing") == []


@pytest.mark.parametrize("end", [JobState.CANCELLED, JobState.INTERRUPTED, JobState.PASSED])
def test_a_terminal_state_cannot_be_overwritten(store: Store, end: JobState) -> None:
    job_id = new_job(store, new_run(store))
    store.set_job_state(job_id, JobState.BUILDING, T0 + 1, agent="agent-1")
    store.set_job_state(job_id, end, T0 + 2, cancelled_by="alice" if end is JobState.CANCELLED else None)
    with pytest.raises(ValueError, match=f"already {end.value}"):
        store.set_job_state(job_id, JobState.FAILED, T0 + 3, returncode=-15)  # the late exit
    row = store.job(job_id)
    assert row is not None
    assert (row.state, row.returncode, row.finished_at) == (end.value, None, T0 + 2)
    assert row.cancelled_by == ("alice" if end is JobState.CANCELLED else None)
    assert [e.state for e in store.job_events(job_id)] == ["scheduled", "building", end.value]


def test_bad_input_is_refused_with_value_errors(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown trigger"):
        store.create_run("build", 1, "cron", "maintd", {}, T0)
    with pytest.raises(ValueError, match="no job 77"):
        store.set_job_state(77, JobState.BUILDING, T0)
    with pytest.raises(ValueError):
        store.set_job_state(new_job(store, new_run(store)), "exploded", T0)
    with pytest.raises(ValueError, match="FOREIGN KEY"):
        new_job(store, run_id=4242)  # foreign keys are on
    with pytest.raises(ValueError, match="UNIQUE"):
        store.create_run("build", 1, "user", "bob", {}, T0)  # counter 1 exists
    with pytest.raises(ValueError, match="cannot finish as 'running'"):
        store.finish_run(1, "running", T0)
    assert [r.counter for r in store.recent_runs()] == [1]


def test_record_revision_says_whether_the_revision_is_new(store: Store) -> None:
    assert store.last_revision("repo") is None
    assert store.record_revision("repo", "aaa", T0) is True
    assert store.record_revision("repo", "aaa", T0 + 60) is False
    assert store.record_revision("other", "aaa", T0 + 60) is True
    assert store.record_revision("repo", "bbb", T0 + 120) is True
    assert store.last_revision("repo") == "bbb"
    assert store.record_revision("repo", "aaa", T0 + 180) is True  # differs from the newest (a force-push back)
    assert store.last_revision("repo") == "aaa"
    assert store.last_revision("other") == "aaa"


def test_recover_interrupts_building_jobs_and_their_runs_and_returns_the_queue(store: Store, db_path: Path) -> None:
    broken = new_run(store)
    building = new_job(store, broken, "unit")
    left_behind = new_job(store, broken, "lint")
    finished = new_job(store, broken, "docs")
    store.set_job_state(building, JobState.BUILDING, T0 + 1, agent="agent-1")
    store.set_job_state(finished, JobState.BUILDING, T0 + 1, agent="agent-2")
    store.set_job_state(finished, JobState.PASSED, T0 + 2, returncode=0)
    waiting = new_run(store, "deploy")
    queued = [new_job(store, waiting, "a"), new_job(store, waiting, "b")]
    store.close()

    again = Store(str(db_path))  # a fresh process after a crash
    try:
        assert again.recover(T0 + 100) == ([building, left_behind], queued)
        assert again.job(building).state == "interrupted"  # type: ignore[union-attr]
        assert again.job(building).finished_at == T0 + 100  # type: ignore[union-attr]
        assert again.job(finished).state == "passed"  # type: ignore[union-attr]
        assert [(e.state, e.detail) for e in again.job_events(building)][-1] == ("interrupted", RESTART_DETAIL)
        assert again.job_events(left_behind)[-1].state == "interrupted"
        states = {r.id: (r.state, r.finished_at) for r in again.recent_runs()}
        assert states == {broken: ("interrupted", T0 + 100), waiting: ("running", None)}
        assert [j.id for j in again.scheduled_jobs()] == queued
        with pytest.raises(ValueError, match="already interrupted"):
            again.set_job_state(building, JobState.PASSED, T0 + 101, returncode=0)

        assert again.recover(T0 + 200) == ([], queued)  # nothing more to interrupt
        assert len(again.job_events(building)) == 3
    finally:
        again.close()


def test_a_file_store_is_in_wal_mode_with_a_schema_version(store: Store, db_path: Path) -> None:
    new_run(store)
    other = sqlite3.connect(db_path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
        assert other.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1  # committed, visible to others
    finally:
        other.close()
    assert Path(f"{db_path}-wal").exists()


def test_reopening_keeps_the_data_and_the_schema(store: Store, db_path: Path) -> None:
    store.record_revision("repo", "aaa", T0)
    store.close()
    again = Store(str(db_path))
    try:
        assert again.last_revision("repo") == "aaa"
        assert again.next_counter("build") == 1
    finally:
        again.close()


def test_a_newer_schema_is_refused(store: Store, db_path: Path) -> None:
    store.close()
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="schema version"):
        Store(str(db_path))


def test_audit_entries_come_oldest_first_and_the_limit_keeps_the_newest(store: Store) -> None:
    first = store.audit("enable", "alice", T0, reason="upgrade")
    store.audit("cancel", "bob", T0 + 1, reason="stuck", target="scheduler:job-3")
    store.audit("disable", "alice", T0 + 2, detail="drain took 3s")
    entries = store.audit_entries()
    assert [(e.action, e.by, e.at) for e in entries] == [
        ("enable", "alice", T0),
        ("cancel", "bob", T0 + 1),
        ("disable", "alice", T0 + 2),
    ]
    assert (entries[0].id, entries[0].reason, entries[1].target, entries[2].detail) == (
        first,
        "upgrade",
        "scheduler:job-3",
        "drain took 3s",
    )
    assert [e.action for e in store.audit_entries(limit=2)] == ["cancel", "disable"]


def test_a_missing_state_directory_is_a_clear_store_error(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "maintd.db"
    with pytest.raises(StoreError) as caught:
        Store(str(path))
    assert isinstance(caught.value, MaintdError)
    assert caught.value.code == "store_unavailable"
    assert str(path) in caught.value.message
    assert "cannot open the store" in caught.value.message


def test_a_database_path_that_is_a_directory_is_a_clear_store_error(tmp_path: Path) -> None:
    (tmp_path / "maintd.db").mkdir()
    with pytest.raises(StoreError, match=r"cannot open the store at .*maintd\.db"):
        Store(str(tmp_path / "maintd.db"))


def test_a_full_disk_is_a_store_error_and_nothing_is_half_written(store: Store) -> None:
    job_id = new_job(store, new_run(store))
    store.set_job_state(job_id, JobState.BUILDING, T0 + 1, agent="agent-1")
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now full

    with pytest.raises(StoreError, match=f"could not record job {job_id} becoming passed: database or disk is full") as caught:
        store.set_job_state(job_id, JobState.PASSED, T0 + 2, returncode=0, detail="x" * 200_000)
    assert caught.value.code == "store_unavailable"
    row = store.job(job_id)
    assert row is not None and (row.state, row.returncode) == ("building", None)  # the job row was rolled back too
    assert [e.state for e in store.job_events(job_id)] == ["scheduled", "building"]

    store._db.execute("PRAGMA max_page_count = 1073741823")  # space again: the store works on
    store.set_job_state(job_id, JobState.PASSED, T0 + 3, returncode=0)
    assert store.job(job_id).state == "passed"  # type: ignore[union-attr]


def test_a_failure_in_the_second_write_of_a_transaction_undoes_the_first(store: Store) -> None:
    job_id = new_job(store, new_run(store))
    # SQLite undoes only the failing statement here; the store must roll back the job row itself
    store._db.execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON job_events WHEN NEW.detail = 'boom' BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    with pytest.raises(ValueError, match=f"refused job {job_id} becoming building"):
        store.set_job_state(job_id, JobState.BUILDING, T0 + 1, agent="agent-1", detail="boom")
    row = store.job(job_id)
    assert row is not None and (row.state, row.agent, row.started_at) == ("scheduled", None, None)
    assert [e.state for e in store.job_events(job_id)] == ["scheduled"]


def test_a_read_only_database_refuses_writes_with_a_store_error(store: Store) -> None:
    store._db.execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match="could not record the audit entry 'enable' by alice"):
        store.audit("enable", "alice", T0)
    assert store.audit_entries() == []


def test_the_actor_answers_other_threads_through_sync_store(db_path: Path) -> None:
    db_path.parent.mkdir()
    ref = StoreActor.start(str(db_path))
    proxy = ref.proxy()
    store = SyncStore(proxy, timeout=10)
    results: dict[str, Any] = {}

    def caller() -> None:  # another actor's thread: the connection stays in the store's thread
        try:
            run_id = store.create_run("build", store.next_counter("build"), "user", "alice", {"repo": "abc"}, T0)
            (job_id,) = store.create_jobs(run_id, "build", 1, "test", 0, (("unit", "/state/unit.log"),), T0)
            store.set_job_state(job_id, JobState.BUILDING, T0 + 1, agent="agent-1")
            results["runs"] = store.recent_runs()
            try:
                store.set_job_state(job_id, JobState.SCHEDULED, T0 + 2)
                store.set_job_state(job_id, JobState.CANCELLED, T0 + 3, cancelled_by="bob")
                store.set_job_state(job_id, JobState.PASSED, T0 + 4)
            except ValueError as exc:
                results["refused"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            results["error"] = exc

    thread = threading.Thread(target=caller)
    thread.start()
    thread.join(15)
    assert "error" not in results, results.get("error")
    (run,) = results["runs"]
    assert (run.counter, run.triggered_by, [j.state for j in run.jobs]) == (1, "alice", ["building"])
    assert "already cancelled" in results["refused"]

    future = proxy.call(lambda s: s.recent_runs())
    assert isinstance(future, CallbackFuture)
    assert [j.state for j in future.get(timeout=10)[0].jobs] == ["cancelled"]
    ref.stop()
    with pytest.raises(StoreError, match="the store has stopped"):
        store.next_counter("build")


def test_an_actor_that_cannot_open_its_store_answers_with_the_reason(tmp_path: Path) -> None:
    ref = StoreActor.start(str(tmp_path / "missing" / "maintd.db"))
    store = SyncStore(ref.proxy(), timeout=10)
    for _ in range(2):  # it stays up and keeps saying why
        with pytest.raises(StoreError, match=r"cannot open the store at .*missing"):
            store.recover(T0)
    assert ref.is_alive()


# -- group commit -----------------------------------------------------------------------


class GatedStoreActor(StoreActor):
    """A StoreActor the test can hold (``hold``) while calls pile up in its inbox, and that
    counts its group commits; an audit entry whose action is ``fail`` fails as a disk would."""

    def on_start(self) -> None:
        super().on_start()
        store = self._store
        assert store is not None
        self.commits = 0
        commit, audit = store.commit_group, store.audit

        def counted_commit() -> None:
            commit()
            self.commits += 1

        def failing_audit(action: str, *args: Any, **kwargs: Any) -> int:
            if action == "fail":
                raise StoreError("database or disk is full")
            return audit(action, *args, **kwargs)

        store.commit_group = counted_commit  # type: ignore[method-assign]
        store.audit = failing_audit  # type: ignore[method-assign]

    def hold(self, entered: threading.Event, release: threading.Event) -> int:
        entered.set()
        assert release.wait(10)
        return self.commits


def held(db_path: Path) -> tuple[Any, Any, threading.Event]:
    """A started GatedStoreActor, held: its thread waits on the returned event."""
    db_path.parent.mkdir()
    ref = GatedStoreActor.start(str(db_path))
    entered, release = threading.Event(), threading.Event()
    ref.proxy().hold(entered, release)
    assert entered.wait(10)
    return ref, ref.proxy(), release


def call(ref: Any, write: Callable[[Store], Any], what: str = "a call") -> Any:
    from actors.store_actor import StoreCall

    reply: Any = CallbackFuture()
    ref.tell(StoreCall(write, what, reply))
    return reply


def committed_audit(db_path: Path) -> list[str]:
    """The audit actions another connection sees: what is committed."""
    db = sqlite3.connect(db_path)
    try:
        return [row[0] for row in db.execute("SELECT action FROM audit ORDER BY id")]
    finally:
        db.close()


def test_queued_calls_are_committed_together_and_answered_only_after_the_commit(db_path: Path) -> None:
    ref, proxy, release = held(db_path)
    try:
        answered_before_commit: list[str] = []

        def on_answer(future: CallbackFuture) -> None:  # runs in the store's thread, as it answers
            action = f"a{future.get(timeout=0) - 1}"
            if action not in committed_audit(db_path):
                answered_before_commit.append(action)

        futures = [call(ref, lambda s, i=i: s.audit(f"a{i}", "alice", T0 + i)) for i in range(50)]
        for future in futures:
            future.add_done_callback(on_answer)
        release.set()
        ids = [future.get(timeout=10) for future in futures]
        assert ids == list(range(1, 51))
        assert committed_audit(db_path) == [f"a{i}" for i in range(50)]
        assert answered_before_commit == []
        assert proxy.commits.get(timeout=10) == 1  # the 50 writes: one commit
    finally:
        ref.stop()


def test_a_refused_call_in_a_group_gets_its_own_error_and_the_others_are_recorded(db_path: Path) -> None:
    ref, _, release = held(db_path)
    try:
        run = call(ref, lambda s: s.create_run("build", 1, "user", "alice", {}, T0))
        twice = call(ref, lambda s: s.create_run("build", 1, "user", "bob", {}, T0))  # the same counter: refused
        jobs = call(ref, lambda s: s.create_jobs(1, "build", 1, "test", 0, (("unit", "/state/unit.log"),), T0))
        unknown = call(ref, lambda s: s.set_job_state(99, JobState.BUILDING, T0))
        audit = call(ref, lambda s: s.audit("enable", "alice", T0))
        release.set()
        assert run.get(timeout=10) == 1
        with pytest.raises(ValueError, match="refused"):
            twice.get(timeout=10)
        assert jobs.get(timeout=10) == [1]
        with pytest.raises(ValueError, match="no job 99"):
            unknown.get(timeout=10)
        assert audit.get(timeout=10) == 1
        store = SyncStore(ref.proxy(), timeout=10)
        (row,) = store.recent_runs()
        assert (row.triggered_by, [j.name for j in row.jobs]) == ("alice", ["unit"])
        assert committed_audit(db_path) == ["enable"]
    finally:
        ref.stop()


def test_a_group_that_fails_is_redone_call_by_call_so_each_caller_gets_its_own_answer(db_path: Path) -> None:
    ref, proxy, release = held(db_path)
    try:
        before = call(ref, lambda s: s.audit("before", "alice", T0))
        failing = call(ref, lambda s: s.audit("fail", "alice", T0))
        after = call(ref, lambda s: s.audit("after", "alice", T0))
        release.set()
        assert before.get(timeout=10) == 1
        with pytest.raises(StoreError, match="disk is full"):
            failing.get(timeout=10)
        assert after.get(timeout=10) == 2
        assert committed_audit(db_path) == ["before", "after"]
        assert proxy.commits.get(timeout=10) == 0  # each redone in its own transaction
    finally:
        ref.stop()


def test_calls_queued_behind_a_stop_are_answered_that_the_store_stopped(db_path: Path) -> None:
    ref, _, release = held(db_path)
    first = call(ref, lambda s: s.audit("first", "alice", T0))
    stopped = ref.stop(block=False)
    late = call(ref, lambda s: s.audit("late", "alice", T0))
    late_proxy_call = ref.proxy().call(lambda s: s.audit("late proxy call", "alice", T0))  # pykka's, behind the stop:
    stopped_again = ref.stop(block=False)  # answered by pykka's teardown, after the store's
    release.set()
    assert stopped.get(timeout=10) is True
    assert first.get(timeout=10) == 1
    with pytest.raises(Exception, match="stopped"):
        late.get(timeout=10)
    with pytest.raises(pykka.ActorDeadError, match="stopped before handling the message"):
        late_proxy_call.get(timeout=10)
    assert stopped_again.get(timeout=10) is True  # a second stop queued behind the first is answered, not left hanging
    assert committed_audit(db_path) == ["first"]


def test_recover_tells_the_state_of_each_job_it_ends_once_recorded(store: Store) -> None:
    broken = new_run(store)
    building = new_job(store, broken, "unit")
    new_job(store, broken, "lint")  # scheduled in the broken run: interrupted with it
    store.set_job_state(building, JobState.BUILDING, T0 + 1, agent="agent-1")
    waiting = new_run(store, "deploy")
    on_its_way = new_job(store, waiting, "a")
    new_job(store, waiting, "b")  # queued again: not ended
    assert store.hand_out_many(((on_its_way, "agent-2"),)) == [True]
    assert store.request_cancel(on_its_way, "alice")
    ended: list[str] = []
    store.recover(T0 + 100, on_end=ended.append)
    assert sorted(ended) == ["cancelled", "interrupted", "interrupted"]
    assert store.job(on_its_way).state == "cancelled"  # type: ignore[union-attr]
    ended.clear()
    store.recover(T0 + 200, on_end=ended.append)
    assert ended == []  # each job ends once
