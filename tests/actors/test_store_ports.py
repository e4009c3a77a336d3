"""The store's typed ports hold: SyncStore is the Store method for method, the protocols the
cores take say what the Store has, and nothing calls the store (or asks an actor) by a string."""

from __future__ import annotations

import ast
import inspect
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors.jobs import JobState
from actors.ports import AuditLog, JobStore
from actors.store import Store, StoreError
from actors.store_actor import StoreActor, SyncStore

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0

#: The Store's own business, not forwarded: the connection, and the group commit the actor drives.
ACTOR_ONLY = {"close", "begin_group", "commit_group", "abort_group"}


def public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    """Its public methods, its bases' too (the Store's reads are in its base Queries)."""
    out: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__[:-1]):  # not object's
        out.update({name: fn for name, fn in vars(klass).items() if callable(fn) and not name.startswith("_")})
    return out


def protocol_methods(proto: type) -> dict[str, Callable[..., Any]]:
    out: dict[str, Callable[..., Any]] = {}
    for cls in reversed(proto.__mro__):
        if cls is not object and getattr(cls, "_is_protocol", False):
            out.update(public_methods(cls))
    return out


def test_sync_store_has_exactly_the_store_methods_with_the_same_signatures() -> None:
    store = {name: fn for name, fn in public_methods(Store).items() if name not in ACTOR_ONLY}
    sync = public_methods(SyncStore)
    assert sorted(sync) == sorted(store), "a Store method is missing from SyncStore (or SyncStore has one too many)"
    for name, fn in store.items():
        assert inspect.signature(sync[name]) == inspect.signature(fn), name


@pytest.mark.parametrize("proto", [JobStore, AuditLog])
def test_the_ports_the_cores_take_are_store_methods_with_the_same_signatures(proto: type) -> None:
    methods = protocol_methods(proto)
    assert methods, proto
    for name, fn in methods.items():
        assert name in public_methods(Store), f"{proto.__name__}.{name} is not a Store method"
        assert inspect.signature(fn) == inspect.signature(getattr(Store, name)), name


# -- every SyncStore method reaches the same Store method with the same arguments ---------------


class Recorder:
    """Stands for the Store in the actor: each method called answers (name, args, kwargs)."""

    _group = False

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return lambda *args, **kwargs: (name, args, kwargs)


class RecordingStoreActor(StoreActor):
    def on_start(self) -> None:
        self._store = Recorder()  # type: ignore[assignment]


@pytest.fixture
def recorded() -> Iterator[SyncStore]:
    ref = RecordingStoreActor.start(":memory:")
    yield SyncStore(ref.proxy(), timeout=10)
    ref.stop()


def bound(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    arguments = inspect.signature(fn).bind(None, *args, **kwargs)
    arguments.apply_defaults()
    return dict(arguments.arguments)


@pytest.mark.parametrize("name", sorted(set(public_methods(SyncStore)) - {"later"}))
def test_each_sync_store_method_calls_the_store_method_of_its_name_with_its_arguments(recorded: SyncStore, name: str) -> None:
    method = public_methods(SyncStore)[name]
    params = [p for p in inspect.signature(method).parameters.values() if p.name != "self"]
    args = tuple(f"<{p.name}>" for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)
    kwargs = {p.name: f"<{p.name}>" for p in params if p.kind is p.KEYWORD_ONLY}
    called, got_args, got_kwargs = method(recorded, *args, **kwargs)
    assert called == name
    assert bound(getattr(Store, name), got_args, got_kwargs) == bound(method, args, kwargs)


# -- later: a typed write, not waited for ----------------------------------------------------


@pytest.fixture
def sync_store(tmp_path: Path) -> Iterator[SyncStore]:
    ref = StoreActor.start(str(tmp_path / "maintd.db"))
    yield SyncStore(ref.proxy(), timeout=10)
    ref.stop()


def test_a_write_sent_later_is_seen_by_the_next_call(sync_store: SyncStore) -> None:
    sync_store.later(lambda s: s.audit("enable", "alice", T0, reason="upgrade"), "audit")
    (entry,) = sync_store.audit_entries()
    assert (entry.action, entry.by, entry.reason) == ("enable", "alice", "upgrade")


@pytest.mark.parametrize("plain", [False, True], ids=["sync-store", "plain-store"])
def test_a_write_sent_later_that_is_refused_is_logged_naming_it(
    plain: bool, sync_store: SyncStore, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.ERROR)
    store: Any = Store(str(tmp_path / "plain.db")) if plain else sync_store
    store.later(lambda s: s.set_job_state(99, JobState.PASSED, T0), "set_job_state")
    store.paused_pipelines()  # behind it: the failure is logged by now
    assert "the store could not record set_job_state: no job 99 in the store" in caplog.text


def test_a_stopped_store_names_the_call_it_did_not_carry_out(tmp_path: Path, caplog: Any) -> None:
    ref = StoreActor.start(str(tmp_path / "maintd.db"))
    store = SyncStore(ref.proxy(), timeout=10)
    ref.stop()
    with pytest.raises(StoreError, match="the store has stopped; recent_runs was not carried out"):
        store.recent_runs()
    caplog.set_level(logging.ERROR)
    store.later(lambda s: s.take_back(1), "take_back")
    assert "the store has stopped; take_back was not recorded" in caplog.text
    assert not ref.is_alive()


def test_the_trio_shell_queries_the_actor_through_one_typed_call(sync_store: SyncStore) -> None:
    sync_store.audit("enable", "alice", T0)
    proxy = pykka.ActorRegistry.get_by_class(StoreActor)[0].proxy()
    rows = proxy.call(lambda s: s.audit_entries(limit=5)).get(timeout=10)
    assert [r.action for r in rows] == ["enable"]


# -- nothing calls the store, or asks an actor, by a string ------------------------------------

#: calls whose first argument was once a Store method's name
STORE_CALLS = {"later", "stored", "_call", "StoreCall", "call"}
STORE_METHODS = set(public_methods(Store))
SOURCES = sorted([*(ROOT / "actors").glob("*.py"), *(ROOT / "daemon").glob("*.py"), *(ROOT / "bench").glob("*.py")])


def called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def is_str(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant | ast.JoinedStr) and not (
        isinstance(node, ast.Constant) and not isinstance(node.value, str)
    )


def by_string(source: str, where: str, in_actors: bool) -> list[str]:
    """Where ``source`` calls the store by a method's name, or sends an actor a bare string
    (``in_actors``: or matches one in a ``case``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        at = f"{where}:{node.pattern.lineno if isinstance(node, ast.match_case) else getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            name = called_name(node)
            args = node.args
            if name == "partial" and args and isinstance(args[0], ast.Attribute | ast.Name):  # partial(store.later, ...)
                name, args = called_name(ast.Call(func=args[0], args=[], keywords=[])), args[1:]
            if name in STORE_CALLS and args and isinstance(args[0], ast.Constant) and args[0].value in STORE_METHODS:
                found.append(f"{at}: {name}() with a method name as a string")
            if name in {"getattr", "setattr"} and len(node.args) >= 2 and not isinstance(node.args[1], ast.Constant):
                target = ast.get_source_segment(source, node.args[0]) or ""
                if "store" in target.lower() or "store" in where:
                    found.append(f"{at}: {name}() by a computed name on the store")
            if name in {"ask", "tell"} and node.args and is_str(node.args[-1]):
                found.append(f"{at}: {name}() with a bare string as the message")
        elif isinstance(node, ast.match_case) and in_actors:
            for pattern in ast.walk(node.pattern):
                if isinstance(pattern, ast.MatchValue) and is_str(pattern.value):
                    found.append(f"{at}: case {ast.unparse(pattern.value)}: a bare string message")
    return found


def test_nothing_calls_the_store_or_an_actor_by_a_string() -> None:
    assert len(SOURCES) > 40
    found = [
        hit
        for path in SOURCES
        for hit in by_string(path.read_text(), str(path.relative_to(ROOT)), in_actors=path.parent.name == "actors")
    ]
    assert found == []


@pytest.mark.parametrize(
    "line",
    [
        'self.store.later("hand_out_many", hand_outs)',
        'functools.partial(self.store.later, "request_cancel", job_id, by)',
        'await self.stored("audit", "forbidden", user, now)',
        "getattr(self.store, method)(*args)",
        'ref.ask("status", timeout=5)',
        'self.ask("config", "info")',
    ],
)
def test_the_string_check_finds_the_old_shapes(line: str) -> None:
    source = f"async def f(self, method, args, ref, user, now, job_id, by, hand_outs):\n    {line}\n"
    assert len(by_string(source, "daemon/example.py", in_actors=False)) == 1


def test_the_string_check_finds_a_bare_string_case_in_an_actor() -> None:
    source = 'def on_receive(self, message):\n    match message:\n        case "queue_length":\n            return 0\n'
    assert len(by_string(source, "actors/example.py", in_actors=True)) == 1
