"""Reading processes in ``/proc``, for the job trees of the subreaper mechanism
(:mod:`daemon.subreaper`) and of ``maintd-agent`` (:mod:`remote.task`): no trio here.

Every read races with the process's exit: each returns None (or skips the process) when it
is gone, never raises.
"""

from __future__ import annotations

import os

from .jobtree import MARK

_KEY = MARK.encode() + b"="


def environ(pid: int) -> bytes | None:
    """The process's environment (empty for a zombie or a kernel thread); None if it is gone."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return None


def marker_of(pid: int, env: bytes | None = None) -> bytes | None:
    """The value of MAINTD_JOB in the process's environment; None if none (or it is gone)."""
    env = environ(pid) if env is None else env
    if not env:
        return None
    at = env.find(_KEY)
    while at > 0 and env[at - 1] != 0:
        at = env.find(_KEY, at + 1)
    if at < 0:
        return None
    end = env.find(b"\0", at)
    return env[at + len(_KEY) : end if end >= 0 else len(env)]


def stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, session) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[3])


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def last_pid() -> str:
    """The pid the kernel handed out last (``/proc/loadavg``): unchanged, no process was born."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return f.read().rsplit(None, 1)[-1].decode()
    except OSError:
        return ""
