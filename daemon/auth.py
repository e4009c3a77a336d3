"""Who is on the other end of a connection (SO_PEERCRED) and whether they may change state.

Reading is open to anyone who can open the socket (its file mode decides that). Changing
state needs root, the daemon's own user, or membership of the configured admin group, and
is refused to the processes of maintd's own jobs: jobs run as the daemon's user, so a job
(whoever can push to a config repo writes one) could otherwise turn maintenance mode off or
on, cancel, trigger or reload as if it were the operator.

A peer is a job's process when any of these holds (see :func:`job_marker`): its cgroup v2
is a job's (``job-<id>``, beside the daemon's own), it descends from the daemon (the ppid
chain in ``/proc/PID/stat``), or its environment has ``MAINTD_JOB`` (where readable). The
peer's pid and command line (bounded, escaped) go into the audit entry of every
state-changing request. These are procfs reads of a few hundred bytes: done inline.

The user and group look-ups (``pwd``, ``grp``, ``getgrouplist``) may go over the network
(NSS on LDAP, sssd) and they run in the event loop's thread, so their answers are kept for
:data:`NAMES_LIFE` seconds (:data:`NAMES_MAX` of them): a user added to or removed from
the admin group is seen within that time.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable, Hashable
from typing import Any

from actors.errors import Forbidden

from .logs import escape

_CREDS = struct.Struct("3i")
#: How far up the ppid chain a peer is followed, and how much of its command line is kept.
MAX_ANCESTORS = 64
CMDLINE_BYTES = 512
ENVIRON_BYTES = 256 * 1024
PROC = "/proc"
#: How long a user or group look-up is kept, and how many are kept.
NAMES_LIFE = 60.0
NAMES_MAX = 256


class TimedCache:
    """Answers kept for ``life`` seconds, at most ``size`` of them (the oldest go first)."""

    def __init__(self, life: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.life, self.size, self.clock = life, size, clock
        self._entries: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        now = self.clock()
        kept = self._entries.pop(key, None)
        if kept is not None and kept[0] > now:
            self._entries[key] = kept
            return kept[1]
        value = compute()
        while len(self._entries) >= self.size:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (now + self.life, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


NAMES = TimedCache(NAMES_LIFE, NAMES_MAX)


class Peer:
    __slots__ = ("admin", "cmdline", "gid", "job", "pid", "uid", "user")

    def __init__(
        self, pid: int, uid: int, gid: int, admin_group: str | None, *, job: str | None = None, cmdline: str = ""
    ) -> None:
        self.pid, self.uid, self.gid = pid, uid, gid
        self.user: str = NAMES.get(("user", uid), lambda: _user_name(uid))
        self.admin = (
            uid == 0
            or uid == os.geteuid()
            or NAMES.get(("admin", self.user, gid, admin_group), lambda: _in_group(self.user, gid, admin_group))
        )
        self.job = job
        self.cmdline = cmdline

    @property
    def detail(self) -> str:
        """For the audit log: which process asked."""
        return f"pid {self.pid}: {self.cmdline or '?'}"

    def require_admin(self, action: str, admin_group: str | None) -> None:
        if self.job is not None:
            raise Forbidden(
                f"{action} changes state and is refused to a job's own processes ({self.job}): "
                "a job may not change maintd's state; ask an operator"
            )
        if not self.admin:
            who = f"you are {self.user} (uid {self.uid})"
            group = f", or membership of group {admin_group!r}" if admin_group else ""
            raise Forbidden(f"{action} changes state and needs root, the daemon's user{group}; {who}")


def peer_of(sock: socket.socket, admin_group: str | None) -> Peer:
    pid, uid, gid = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
    return Peer(pid, uid, gid, admin_group, job=job_marker(pid), cmdline=command_line(pid))


def job_marker(pid: int, daemon_pid: int | None = None, proc: str = PROC) -> str | None:
    """Why ``pid`` is one of this daemon's jobs' processes, or None if it is not."""
    if pid <= 0:
        return None
    daemon_pid = os.getpid() if daemon_pid is None else daemon_pid
    own_cgroup, own_marker = _own(daemon_pid, proc)
    cgroup = _cgroup(pid, proc)
    if cgroup is not None and cgroup != own_cgroup:
        leaf = cgroup.rstrip("/").rpartition("/")[2]
        if leaf.startswith("job-"):
            return f"its cgroup is {escape(leaf)}"
    if _descends_from(pid, daemon_pid, proc):
        return f"it runs under maintd (pid {daemon_pid})"
    marker = _environ_value(pid, "MAINTD_JOB", proc)
    # The daemon's own marker, when it runs inside another maintd's job, is not one of ours.
    if marker and marker != own_marker:
        return f"MAINTD_JOB={escape(marker[:64])}"
    return None


def _own(daemon_pid: int, proc: str) -> tuple[str | None, str | None]:
    """The daemon's cgroup (read each time: it may move into a leaf of its own) and marker."""
    return _cgroup(daemon_pid, proc), _own_marker(daemon_pid, proc)


@functools.lru_cache(maxsize=4)
def _own_marker(daemon_pid: int, proc: str) -> str | None:
    """The daemon's own ``MAINTD_JOB``: its environment does not change, so it is read once."""
    return _environ_value(daemon_pid, "MAINTD_JOB", proc)


def command_line(pid: int, proc: str = PROC) -> str:
    """``pid``'s command line, its arguments joined by spaces, bounded and escaped for a log."""
    data = _read(f"{proc}/{pid}/cmdline", CMDLINE_BYTES + 1)
    if data is None:
        return ""
    cut = len(data) > CMDLINE_BYTES
    text = data[:CMDLINE_BYTES].rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "backslashreplace")
    return escape(text) + (" ..." if cut else "")


def _read(path: str, limit: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:  # gone, or not ours to read
        return None


def _cgroup(pid: int, proc: str) -> str | None:
    data = _read(f"{proc}/{pid}/cgroup", 4096)
    if data is None:
        return None
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _parent(pid: int, proc: str) -> int | None:
    data = _read(f"{proc}/{pid}/stat", 1024)
    if data is None:
        return None
    # pid (comm) state ppid ...; comm may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def _descends_from(pid: int, ancestor: int, proc: str) -> bool:
    current: int | None = pid
    for _ in range(MAX_ANCESTORS):
        current = _parent(current, proc) if current is not None else None
        if current is None or current <= 0:
            return False
        if current == ancestor:
            return True
        if current == 1:
            return False
    return False


def _environ_value(pid: int, name: str, proc: str) -> str | None:
    data = _read(f"{proc}/{pid}/environ", ENVIRON_BYTES)
    if data is None:
        return None
    prefix = name.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode("utf-8", "replace")
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def _in_group(user: str, gid: int, group: str | None) -> bool:
    if not group:
        return False
    try:
        target = grp.getgrnam(group)
    except KeyError:
        return False
    if gid == target.gr_gid or user in target.gr_mem:
        return True
    try:
        return target.gr_gid in os.getgrouplist(user, gid)
    except (KeyError, OSError):
        return False


def admin_group_problem(group: str | None) -> str | None:
    """Why ``[control] admin_group`` grants nothing (the group does not exist), or None."""
    if not group:
        return None
    try:
        grp.getgrnam(group)
    except KeyError:
        me = NAMES.get(("user", os.geteuid()), lambda: _user_name(os.geteuid()))
        who = "root" if os.geteuid() == 0 else f"root and {me}"
        return (
            f"the admin group {group!r} ([control] admin_group) does not exist: only {who} may change "
            f"maintenance state; create it (groupadd {group}) or name another group"
        )
    return None
