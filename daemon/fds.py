"""File descriptors: enough of them, a budget for HTTP, and an accept loop that survives none.

A flood of idle HTTP connections once held maintd at 1024/1024 descriptors (systemd's
default soft limit): the control socket could not accept, so ``maintctl trigger`` got no
answer, and trio's ``serve_listeners`` logged a traceback every 100 ms per listener (about
1,650 a minute). Three defences:

1. :func:`raise_open_files_limit` at start-up: the soft ``RLIMIT_NOFILE`` goes up to the hard
   one (the unit sets ``LimitNOFILE=``). Jobs inherit the raised limit, as they inherit the
   unit's.
2. :func:`http_connection_cap`: the HTTP server accepts at most this many connections at a
   time; the others wait in the kernel's backlog, holding none of ours. What the cap leaves
   free (at least :data:`FD_RESERVE`, or three quarters of a small limit) is for the control
   socket, the store, the jobs' pipes and logs, and the git polls.
3. :func:`serve_listener`: accept in a loop that, when the kernel says there is no
   descriptor or memory for a new connection (``EMFILE``, ``ENFILE``, ``ENOMEM``,
   ``ENOBUFS``), waits :data:`RETRY_DELAY` and tries again, and logs it one line at a time
   at most every :data:`LOG_EVERY` seconds, with how many there were, never a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

log = logging.getLogger("maintd")

#: Descriptors kept back from the HTTP server for everything else the daemon does.
FD_RESERVE = 256
#: Connections the HTTP server serves at once, whatever the limit (a status page and a scrape
#: or two is its work; a thousand is already a flood).
HTTP_MAX_CONNECTIONS = 1024
#: How long accept waits after running out of descriptors (trio's own choice: 100 ms).
RETRY_DELAY = 0.1
#: At most one log line about accept errors per listener in this many seconds.
LOG_EVERY = 60.0
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one; return (soft before, soft now).

    An unlimited hard limit is not a value the kernel takes for NOFILE: ``fs.nr_open`` is
    used then. Never fails: if the limit cannot be raised it is left as it was.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, target
    return soft, soft


def open_files_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return HTTP_MAX_CONNECTIONS * 4 if soft == resource.RLIM_INFINITY else soft


def http_connection_cap(limit: int | None = None) -> int:
    """How many HTTP connections may be open at once under a soft limit of ``limit``
    descriptors: all but :data:`FD_RESERVE` (or a quarter of a small limit), and at most
    :data:`HTTP_MAX_CONNECTIONS`."""
    limit = open_files_limit() if limit is None else limit
    return max(1, min(HTTP_MAX_CONNECTIONS, max(limit - FD_RESERVE, limit // 4)))


class AcceptErrors:
    """Counts accepts that failed for want of descriptors or memory, and says so in the log:
    the first at once, then one line at most every :data:`LOG_EVERY` seconds with the count."""

    def __init__(self, what: str, clock: Callable[[], float] = trio.current_time) -> None:
        self.what = what
        self.clock = clock
        self.unreported = 0
        self.total = 0
        self.reported_at: float | None = None

    def note(self, exc: OSError) -> None:
        self.total += 1
        self.unreported += 1
        now = self.clock()
        if self.reported_at is not None and now - self.reported_at < LOG_EVERY:
            return
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        if self.reported_at is None:
            log.error(
                "%s: cannot accept a connection: %s (%s); retrying every %gs, and saying so here at most once every %gs "
                "(open files limit %d)",
                self.what, name, os.strerror(exc.errno or 0), RETRY_DELAY, LOG_EVERY, open_files_limit(),
            )  # fmt: skip
        else:
            log.error(
                "%s: cannot accept a connection: %s, %d time(s) in the last %.0fs (open files limit %d)",
                self.what, name, self.unreported, now - self.reported_at, open_files_limit(),
            )  # fmt: skip
        self.reported_at = now
        self.unreported = 0


async def serve_listener(
    listener: trio.SocketListener,
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    *,
    what: str,
    limit: int | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on ``listener`` and run ``handler`` on each in a task of its own
    (the stream is closed when it returns), until cancelled; then the listener is closed
    and the handlers are cancelled.

    With ``limit``, at most that many connections are open at once: the next one is not
    accepted (it waits in the kernel's backlog) until one closes. Running out of
    descriptors or memory is counted by :class:`AcceptErrors` and waited out.
    """
    slots = trio.Semaphore(limit) if limit is not None else None
    errors = AcceptErrors(what)

    async def run(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        finally:
            if slots is not None:
                slots.release()
            await trio.aclose_forcefully(stream)

    async with listener, trio.open_nursery() as nursery:
        task_status.started()
        while True:
            if slots is not None:
                await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:
                if slots is not None:
                    slots.release()
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                errors.note(exc)
                await trio.sleep(RETRY_DELAY)
                continue
            nursery.start_soon(run, stream)
