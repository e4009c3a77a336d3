"""One daemon per state directory: an exclusive ``flock`` on ``STATE/maintd.lock``.

A second maintd on the same state directory (the same command line by mistake, a unit next
to a manual run, or another ``--socket``) must not open the store: its start-up recovery
would mark the first daemon's building jobs ``interrupted`` while they run. So the lock is
taken before anything else touches the state directory, and held for the daemon's life.

The lock belongs to the open file description, which is close-on-exec: jobs and git polls
never inherit it, so it is released exactly when the daemon's process ends (even by
``kill -9``), and a job that outlives the daemon does not keep the next one out. The file
holds the holder's pid, for the message the second daemon prints; it is never removed (an
unlink would let two daemons lock two different files of the same name).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "maintd.lock"


class StateLocked(Exception):
    """Another process holds the state directory's lock (or it cannot be taken); the message says which."""


def lock_state_dir(state_dir: Path) -> int:
    """Take the state directory's lock and write this process's pid into it.

    Returns the lock's file descriptor, to be left open until the process exits. Raises
    :class:`StateLocked` without waiting when another process holds it.
    """
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
    except OSError as exc:
        raise StateLocked(f"cannot open {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        who = f"pid {holder}" if holder else "a process whose pid it has not written yet"
        raise StateLocked(
            f"another maintd ({who}) is using the state directory {state_dir} (it holds {path}); "
            "stop it first, or give this one another --state-dir"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StateLocked(f"cannot lock {path}: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "0") or None
    except (OSError, ValueError):
        return None
