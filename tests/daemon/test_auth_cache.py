"""User and group look-ups are kept for a short while (issue 11): with NSS on LDAP or sssd
each one may stall the event loop, and they ran on every connection."""

from __future__ import annotations

import grp
import os
import pwd
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from daemon import auth


class Counting:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.now = 1000.0
        for module, name in ((pwd, "getpwuid"), (grp, "getgrnam"), (os, "getgrouplist")):
            monkeypatch.setattr(module, name, self.counted(name, getattr(module, name)))
        monkeypatch.setattr(auth.NAMES, "clock", lambda: self.now, raising=False)

    def counted(self, name: str, real: Any) -> Any:
        def call(*args: Any) -> Any:
            self.calls.append(name)
            return real(*args)

        return call


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counting]:
    monkeypatch.setattr(auth, "NAMES", auth.TimedCache(auth.NAMES_LIFE, auth.NAMES_MAX))
    yield Counting(monkeypatch)


def test_a_second_connection_within_the_life_looks_nothing_up(lookups: Counting) -> None:
    a, b = socket.socketpair()
    with a, b:
        first = auth.peer_of(a, "adm")
        assert lookups.calls == ["getpwuid"]
        second = auth.peer_of(a, "adm")
        assert lookups.calls == ["getpwuid"] and second.user == first.user
        lookups.now += auth.NAMES_LIFE + 1
        auth.peer_of(a, "adm")
    assert lookups.calls == ["getpwuid", "getpwuid"]


def test_group_membership_is_kept_for_the_life_too(lookups: Counting) -> None:
    other = 65534 if os.geteuid() != 65534 else 65533
    first = auth.Peer(1, other, other, "no-such-group-here")
    assert not first.admin and "getgrnam" in lookups.calls
    seen = len(lookups.calls)
    assert not auth.Peer(2, other, other, "no-such-group-here").admin
    assert len(lookups.calls) == seen
    lookups.now += auth.NAMES_LIFE + 1
    auth.Peer(3, other, other, "no-such-group-here")
    assert len(lookups.calls) == 2 * seen


def test_the_cache_keeps_at_most_its_size(lookups: Counting) -> None:
    cache = auth.TimedCache(life=60, size=2, clock=lambda: lookups.now)
    for key in "abc":
        cache.get(key, lambda key=key: key.upper())
    assert cache.get("a", lambda: "again") == "again"  # the oldest went first
    assert cache.get("c", lambda: "not again") == "C"
