"""Who is on the other end of a connection (SO_PEERCRED) and whether they may change state.

Reading is open to anyone who can open the socket (its file mode decides that). Changing
state needs root, the daemon's own user, or membership of the configured admin group.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct

from actors.errors import Forbidden

_CREDS = struct.Struct("3i")


class Peer:
    __slots__ = ("admin", "gid", "pid", "uid", "user")

    def __init__(self, pid: int, uid: int, gid: int, admin_group: str | None) -> None:
        self.pid, self.uid, self.gid = pid, uid, gid
        try:
            self.user = pwd.getpwuid(uid).pw_name
        except KeyError:
            self.user = f"uid:{uid}"
        self.admin = uid == 0 or uid == os.geteuid() or _in_group(self.user, gid, admin_group)

    def require_admin(self, action: str, admin_group: str | None) -> None:
        if not self.admin:
            who = f"you are {self.user} (uid {self.uid})"
            group = f", or membership of group {admin_group!r}" if admin_group else ""
            raise Forbidden(f"{action} changes state and needs root, the daemon's user{group}; {who}")


def peer_of(sock: socket.socket, admin_group: str | None) -> Peer:
    pid, uid, gid = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
    return Peer(pid, uid, gid, admin_group)


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
