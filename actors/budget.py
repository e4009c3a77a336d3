"""How long each layer waits for the one inside it: one budget, shorter inside than outside.

A request crosses, from the outside in: the client (``maintctl``, 30 s on its socket),
the control server waiting for an actor's answer (:data:`ACTOR_ANSWER`), the actor
waiting for the store's answer (:data:`STORE_WAIT`), and SQLite waiting for a lock
(:data:`SQLITE_BUSY`). Each inner wait ends before the one outside it, so a slow or
locked disk ends a request with the store's own error (``store_unavailable``, nothing
done: every request is audited before it takes effect) instead of the client hearing
``timeout`` while the request goes on and takes effect behind its back.

An actor makes at most two store calls before a request takes effect (a trigger reads
the run's counter, then audits it), hence ``2 * STORE_WAIT < ACTOR_ANSWER``.
tests/actors/test_budget.py checks the ordering.
"""

from __future__ import annotations

#: SQLite waits this long for another connection's lock before it refuses a transaction.
SQLITE_BUSY = 2.0
#: An actor (and the shell reading the store) waits this long for the store's answer.
STORE_WAIT = 4.0
#: The shell waits this long for an actor's (the supervisor's, a subsystem's) answer.
ACTOR_ANSWER = 10.0
#: The most store calls an actor makes for one request before it takes effect.
STORE_CALLS_BEFORE_EFFECT = 2
