"""The maintenance state machine: the table, and that an illegal event changes nothing."""

import pytest

from actors.errors import IllegalTransition
from actors.maintenance import TRANSITIONS, Machine, MaintenanceEvent
from actors.types import MaintenanceState as S

E = MaintenanceEvent


def test_a_drain_runs_normal_draining_drained_and_back() -> None:
    m = Machine()
    t = m.fire(E.ENABLE, by="alice", at=1.0, reason="upgrade")
    assert (t.from_state, t.to_state, t.by, t.at, t.reason) == (S.NORMAL, S.DRAINING, "alice", 1.0, "upgrade")
    assert m.fire(E.ALL_DRAINED, by="maintd", at=2.0).to_state is S.DRAINED
    assert m.fire(E.WORK_APPEARED, by="maintd", at=3.0).to_state is S.DRAINING
    assert m.fire(E.DISABLE, by="bob", at=4.0).to_state is S.NORMAL
    assert m.last is not None and m.last.by == "bob"


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("event", list(E))
def test_every_event_the_table_does_not_allow_raises_and_leaves_the_state(state: S, event: E) -> None:
    m = Machine()
    m.state = state
    if event in TRANSITIONS[state]:
        assert m.fire(event, by="x", at=0.0).to_state is TRANSITIONS[state][event]
        return
    with pytest.raises(IllegalTransition):
        m.fire(event, by="x", at=0.0)
    assert m.state is state
    assert m.last is None


def test_enabling_twice_is_a_conflict_that_says_so() -> None:
    m = Machine()
    m.fire(E.ENABLE, by="a", at=0.0)
    with pytest.raises(IllegalTransition, match="already on") as info:
        m.fire(E.ENABLE, by="a", at=0.0)
    assert info.value.code == "conflict"


def test_disabling_when_off_is_a_conflict() -> None:
    with pytest.raises(IllegalTransition, match="not on") as info:
        Machine().fire(E.DISABLE, by="a", at=0.0)
    assert info.value.code == "conflict"
