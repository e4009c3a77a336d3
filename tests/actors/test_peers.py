"""Peers: messages held for a subsystem that is being restarted reach its next actor, in order,
even when the first new actor has died already (found by a start refused mid-way: the
supervisor's on_start raised ActorDeadError out of Peers.set)."""

from __future__ import annotations

from typing import Any

import pykka

from actors.peers import Peers


class Inbox(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.got: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "got?":
            return list(self.got)
        self.got.append(message)
        return None


def test_held_messages_survive_a_new_actor_that_is_dead_and_reach_the_next_in_order() -> None:
    peers = Peers()
    peers.set("agents", None)  # failed: being restarted
    for n in range(3):
        peers.tell("agents", n)
    dead = Inbox.start()
    dead.stop()
    peers.set("agents", dead)  # raised ActorDeadError before, and the held messages were lost
    live = Inbox.start()
    peers.set("agents", live)
    peers.tell("agents", 3)
    assert live.ask("got?") == [0, 1, 2, 3]
