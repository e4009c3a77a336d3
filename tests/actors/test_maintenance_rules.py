"""The pure rules beside the transition table: a subsystem's state, and the automatic moves.

Each rule is written out as a table here, and every combination of its inputs is checked
against the table, so a row that is missing, shadowed or reordered fails.
"""

from __future__ import annotations

import itertools

import pytest

from actors.maintenance import TRANSITIONS, MaintenanceEvent, automatic_event, subsystem_state
from actors.types import MaintenanceState as S
from actors.types import SubsystemState as Sub

E = MaintenanceEvent
ANY = None
FLAGS = ("disconnected", "failed", "reported", "draining", "paused", "drained", "blocking")

#: (disconnected, failed, reported, draining, paused, drained, blocking) -> state; ANY: either.
SUBSYSTEM_STATES: list[tuple[tuple[bool | None, ...], Sub]] = [
    ((True, ANY, ANY, ANY, ANY, ANY, ANY), Sub.DISCONNECTED),
    ((False, True, ANY, ANY, ANY, ANY, ANY), Sub.FAILED),
    ((False, False, False, ANY, ANY, ANY, ANY), Sub.UNKNOWN),
    ((False, False, True, False, ANY, ANY, ANY), Sub.RUNNING),
    ((False, False, True, True, False, ANY, ANY), Sub.PAUSING),
    ((False, False, True, True, True, True, False), Sub.DRAINED),
    ((False, False, True, True, True, True, True), Sub.PAUSED),
    ((False, False, True, True, True, False, ANY), Sub.PAUSED),
]


def matching_rows(flags: tuple[bool, ...]) -> list[Sub]:
    return [
        state for row, state in SUBSYSTEM_STATES if all(want is ANY or want == got for want, got in zip(row, flags, strict=True))
    ]


@pytest.mark.parametrize(
    ("row", "expected"), SUBSYSTEM_STATES, ids=[f"{i}-{s.value}" for i, (_, s) in enumerate(SUBSYSTEM_STATES)]
)
def test_each_row_of_the_subsystem_state_table(row: tuple[bool | None, ...], expected: Sub) -> None:
    for filled in itertools.product((False, True), repeat=row.count(ANY)):
        values = iter(filled)
        flags = tuple(next(values) if want is ANY else want for want in row)
        assert subsystem_state(**dict(zip(FLAGS, flags, strict=True))) is expected, flags


def test_every_combination_of_the_flags_matches_exactly_one_row_and_gets_its_state() -> None:
    for flags in itertools.product((False, True), repeat=len(FLAGS)):
        rows = matching_rows(flags)
        assert len(rows) == 1, (flags, rows)
        assert subsystem_state(**dict(zip(FLAGS, flags, strict=True))) is rows[0], flags


def test_only_a_reported_paused_drained_subsystem_with_nothing_blocking_is_drained() -> None:
    drained = [
        flags
        for flags in itertools.product((False, True), repeat=len(FLAGS))
        if subsystem_state(**dict(zip(FLAGS, flags, strict=True))) is Sub.DRAINED
    ]
    assert drained == [(False, False, True, True, True, True, False)]


D, P = Sub.DRAINED, Sub.PAUSED

#: (maintenance state, subsystems' states) -> the automatic event and its reason, or None.
AUTOMATIC: list[tuple[S, dict[str, Sub], tuple[E, str] | None]] = [
    (S.NORMAL, {}, None),
    (S.NORMAL, {"a": Sub.RUNNING}, None),
    (S.NORMAL, {"a": D}, None),
    (S.DRAINING, {}, (E.ALL_DRAINED, "every subsystem is drained")),
    (S.DRAINING, {"a": D, "b": D}, (E.ALL_DRAINED, "every subsystem is drained")),
    (S.DRAINING, {"a": D, "b": P}, None),
    (S.DRAINED, {}, None),
    (S.DRAINED, {"a": D, "b": D}, None),
    (S.DRAINED, {"a": D, "b": P, "c": Sub.FAILED}, (E.WORK_APPEARED, "not drained any more: b, c")),
]


@pytest.mark.parametrize(("state", "subsystems", "expected"), AUTOMATIC)
def test_each_row_of_the_automatic_transitions(state: S, subsystems: dict[str, Sub], expected: tuple[E, str] | None) -> None:
    assert automatic_event(state, subsystems) == expected


@pytest.mark.parametrize("other", [sub for sub in Sub if sub is not Sub.DRAINED])
@pytest.mark.parametrize("state", list(S))
def test_one_subsystem_not_drained_holds_a_drain_back_and_ends_drained(state: S, other: Sub) -> None:
    subsystems = {"a": D, "b": other, "c": D}
    expected = (E.WORK_APPEARED, "not drained any more: b") if state is S.DRAINED else None
    assert automatic_event(state, subsystems) == expected


@pytest.mark.parametrize(("state", "subsystems", "expected"), [row for row in AUTOMATIC if row[2] is not None])
def test_every_automatic_event_is_one_the_table_allows(state: S, subsystems: dict[str, Sub], expected: tuple[E, str]) -> None:
    assert expected[0] in TRANSITIONS[state]
