"""The trio <-> pykka bridge, in one trio run: nothing blocks the loop, every wait is bounded."""

from __future__ import annotations

import threading
from typing import Any

import msgspec
import pykka
import pytest
import trio
import trio.lowlevel

from actors.future import CallbackFuture
from actors.messages import Enable, Register
from actors.status import Event, MaintenanceInfo, RunningSystems, Status
from actors.supervisor_actor import SupervisorActor
from daemon.bridge import Bridge, TrioTimers, WallClock
from daemon.hub import StatusHub


class Slow(pykka.ThreadingActor):
    """Answers after the test lets it, so the loop must keep running meanwhile."""

    use_daemon_thread = True

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    @staticmethod
    def _create_future() -> CallbackFuture:
        return CallbackFuture()

    def on_receive(self, message: Any) -> Any:
        self.gate.wait(10)
        if message == "raise":
            raise ValueError("refused")
        return message * 2


async def test_the_loop_keeps_running_while_an_actor_works() -> None:
    bridge = Bridge(trio.lowlevel.current_trio_token())
    gate = threading.Event()
    ref = Slow.start(gate)
    ticks = 0
    async with trio.open_nursery() as nursery:

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                if ticks == 20:
                    gate.set()  # only a loop that was not blocked gets here
                await trio.lowlevel.checkpoint()

        nursery.start_soon(ticker)
        assert await bridge.ask(ref, 21, timeout=5) == 42
        nursery.cancel_scope.cancel()
    assert ticks >= 20


async def test_an_actor_error_comes_back_to_the_caller() -> None:
    bridge = Bridge(trio.lowlevel.current_trio_token())
    gate = threading.Event()
    gate.set()
    with pytest.raises(ValueError, match="refused"):
        await bridge.ask(Slow.start(gate), "raise", timeout=5)


async def test_a_wait_is_bounded() -> None:
    bridge = Bridge(trio.lowlevel.current_trio_token())
    with pytest.raises(trio.TooSlowError):
        await bridge.wait(CallbackFuture(), timeout=0.05)


async def test_a_future_already_done_wakes_at_once() -> None:
    bridge = Bridge(trio.lowlevel.current_trio_token())
    future = CallbackFuture()
    future.set("ready")
    assert await bridge.wait(future, timeout=1) == "ready"


async def test_the_deadline_timer_fires_into_the_supervisor_through_trio() -> None:
    bridge = Bridge(trio.lowlevel.current_trio_token())
    fatal: list[str] = []
    hub = StatusHub(bridge, fatal.append)
    overdue = trio.Event()
    hub.listeners.append(lambda status, event: overdue.set() if status.maintenance.overdue else None)
    async with trio.open_nursery() as nursery:
        timers = TrioTimers(bridge, nursery)
        supervisor = SupervisorActor.start(clock=WallClock(), timers=timers, sink=hub)
        timers.target = supervisor
        # a subsystem that never acknowledges keeps the drain open past its deadline
        supervisor.ask(Register(name="mute", link=_Mute(), by="test"), timeout=5)
        await bridge.ask(supervisor, Enable(by="test", deadline_seconds=0.05), timeout=5)
        with trio.fail_after(5):
            await overdue.wait()
        assert hub.status is not None and hub.status.maintenance.state == "draining"
        nursery.cancel_scope.cancel()
    assert fatal == []


class _Mute:
    def send(self, message: dict[str, Any]) -> None:
        pass

    def route_to(self, actor: Any) -> None:
        pass


async def test_calls_from_many_threads_all_run_in_the_trio_thread_in_each_threads_order() -> None:
    """call_soon batches calls behind one wake-up: none is lost, none runs out of order,
    and a flood bigger than one batch still runs to the end."""
    bridge = Bridge(trio.lowlevel.current_trio_token())
    trio_thread = threading.get_ident()
    threads, per_thread = 8, 3 * Bridge.BATCH
    seen: list[tuple[int, int]] = []
    wrong_thread: list[int] = []
    done = trio.Event()

    def record(thread: int, i: int) -> None:
        if threading.get_ident() != trio_thread:
            wrong_thread.append(thread)
        seen.append((thread, i))
        if len(seen) == threads * per_thread:
            done.set()

    def caller(thread: int) -> None:
        for i in range(per_thread):
            bridge.call_soon(record, thread, i)

    workers = [threading.Thread(target=caller, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    with trio.fail_after(10):
        await done.wait()
    for worker in workers:
        worker.join(5)
    assert wrong_thread == []
    for thread in range(threads):
        assert [i for t, i in seen if t == thread] == list(range(per_thread))


async def test_after_batch_runs_once_after_the_calls_of_its_pass() -> None:
    bridge = Bridge(trio.lowlevel.current_trio_token())
    log: list[str] = []
    done = trio.Event()

    def call(name: str) -> None:
        log.append(name)
        bridge.after_batch(flush)

    def flush() -> None:
        log.append("flush")
        done.set()

    # Queued before the trio thread can run any of them (it is running this test until the
    # next checkpoint): one pass, one flush after it.
    for name in ("a", "b", "c"):
        bridge.call_soon(call, name)
    assert log == []
    with trio.fail_after(5):
        await done.wait()
    assert log == ["a", "b", "c", "flush"]


class _Watcher:
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def push(self, *parts: bytes) -> None:
        self.lines.append(b"".join(parts))


def _status(state: str) -> Status:
    info = MaintenanceInfo(
        enabled=state != "normal", state=state, safe_to_restart=state == "drained", updated_by=None, updated_on=None,
        reason=None, deadline=None, overdue=False, on_deadline=None, drain_id=None,
    )  # fmt: skip
    return Status(maintenance=info, subsystems=(), running_systems=RunningSystems())


def _event(seq: int, status: Status) -> Event:
    return Event(seq=seq, at="", event="state_changed", maintenance=status.maintenance)


async def test_a_watcher_that_subscribes_in_a_burst_gets_the_snapshot_that_has_its_events() -> None:
    """The supervisor sends a burst's events before the status that has them: a watcher that
    subscribes meanwhile gets that later status, not one that misses what others were told."""
    hub = StatusHub(Bridge(trio.lowlevel.current_trio_token()), on_fatal=lambda error: None)
    old, new = _status("normal"), _status("draining")
    early = _Watcher()
    hub._apply(old, None)
    hub.subscribe(early, lambda status: (b"snapshot ", status))
    hub._apply(None, _event(1, new))  # the burst's event, ahead of its status
    late = _Watcher()
    hub.subscribe(late, lambda status: (b"snapshot ", status))
    assert late.lines == []  # the snapshot it would get does not have event 1 yet
    hub._apply(new, None)  # the end of the burst
    assert late.lines == [b"snapshot " + msgspec.json.encode(new)]
    hub._apply(None, _event(2, new))
    hub._apply(new, None)
    hub.flush()

    def events(w: _Watcher) -> list[int]:
        return [msgspec.json.decode(x)["seq"] for line in w.lines[1:] for x in line.splitlines()]

    assert events(late) == [2]  # after its snapshot: event 2, not event 1 (the snapshot has it)
    assert early.lines[0] == b"snapshot " + msgspec.json.encode(old)
    assert events(early) == [1, 2]


async def test_an_unsubscribed_waiting_watcher_is_forgotten() -> None:
    hub = StatusHub(Bridge(trio.lowlevel.current_trio_token()), on_fatal=lambda error: None)
    status = _status("normal")
    hub._apply(status, None)
    hub._apply(None, _event(1, status))
    gone = _Watcher()
    hub.subscribe(gone, lambda s: (s,))
    hub.unsubscribe(gone)
    hub._apply(status, None)
    assert gone.lines == [] and gone not in hub.watchers


async def test_the_hub_is_ready_only_once_every_builtin_subsystem_started() -> None:
    """The supervisor publishes a status after each subsystem it adds: serving the socket on
    the first one let a request find `config` not started yet ("restarting; try again",
    seen in CI under load). Ready means a status at or after the "started" event."""
    hub = StatusHub(Bridge(trio.lowlevel.current_trio_token()), on_fatal=lambda error: None)
    status = _status("normal")
    registered = Event(seq=1, at="", event="subsystem_registered", maintenance=status.maintenance)
    hub._apply(status, registered)  # materials added; scheduler, agents and config not yet
    assert not hub.ready.is_set()
    hub._apply(None, Event(seq=2, at="", event="started", maintenance=status.maintenance))  # in a burst
    assert not hub.ready.is_set()
    hub._apply(status, None)
    assert hub.ready.is_set()


async def test_a_timer_armed_after_its_nursery_closed_is_dropped_and_the_batch_goes_on() -> None:
    bridge = Bridge(trio.lowlevel.current_trio_token())
    async with trio.open_nursery() as closed:
        pass
    timers = TrioTimers(bridge, closed)
    after = trio.Event()
    timers.arm("late", 0, "tick")
    bridge.call_soon(after.set)  # in the same pass, after the arm
    with trio.fail_after(5):
        await after.wait()
    assert "late" not in timers._scopes
