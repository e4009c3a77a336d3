"""A small blocking client for the control socket (no trio: maintctl must start fast)."""

from __future__ import annotations

import itertools
import os
import socket
import stat
import struct
import time
from typing import Any

import msgspec

from daemon.paths import describe_uid


class DaemonError(Exception):
    """The daemon answered with an error: ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Unreachable(Exception):
    """The daemon cannot be reached or went away."""


class Untrusted(Unreachable):
    """Something answers on the socket, but not a process that may be the daemon."""


def check_daemon(sock: socket.socket, path: str) -> None:
    """Refuse to believe whoever answers on ``sock`` unless it runs as root, as this user, or
    as the owner of the socket's folder when that folder could only have been given to them.

    Who listens is read from the kernel (``SO_PEERCRED``, the listener's credentials), not
    from anything it says. The folder's owner counts only when the folder sits in a parent
    that nobody but root (or this user) may write in, like ``/run/maintd`` under ``/run``:
    anyone can create ``/tmp/maintd-UID`` first, and then they own it. Raises
    :class:`Untrusted` (exit 3: no trustworthy daemon can be reached).
    """
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    trusted = {0, os.geteuid()}
    folder = os.path.dirname(os.path.abspath(path))
    real = os.path.dirname(os.path.realpath(path))
    try:
        link, st = os.lstat(folder), os.stat(real)
        parents = [os.stat(os.path.dirname(folder)), os.stat(os.path.dirname(real))]
    except OSError:
        pass
    else:
        link_ok = not stat.S_ISLNK(link.st_mode) or link.st_uid in trusted
        if link_ok and all(p.st_uid in trusted and not p.st_mode & 0o022 for p in parents):
            trusted.add(st.st_uid)
    if uid not in trusted:
        raise Untrusted(
            f"refusing to trust {path}: it is served by user {describe_uid(uid)}, who is neither root nor you "
            "nor the owner of a "
            f"socket folder that only root or you could have made; it could fake the daemon's answers. "
            f"Check who made {folder} (ls -ld {folder}) and who serves the socket (ss -xlp)"
        )



class Client:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except FileNotFoundError:
            raise Unreachable(
                f"maintd is not running: no socket at {path} (start maintd, or give --socket / MAINTD_SOCKET)"
            ) from None
        except ConnectionRefusedError:
            raise Unreachable(f"maintd is not running: nobody answers on {path}") from None
        except PermissionError:
            raise Unreachable(f"cannot open {path}: permission denied (the socket is for root and the admin group)") from None
        except OSError as exc:
            raise Unreachable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        try:
            check_daemon(self.sock, path)
        except Unreachable:
            self.sock.close()
            raise
        self.buffer = b""
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, type_: str, **fields: Any) -> int:
        request_id = next(self.ids)
        line = msgspec.json.encode({"id": request_id, "type": type_, **{k: v for k, v in fields.items() if v is not None}})
        try:
            self.sock.sendall(line + b"\n")
        except OSError as exc:
            raise Unreachable(f"lost the connection to maintd: {exc.strerror or exc}") from None
        return request_id

    def read(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next line from the daemon, or None when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (end := self.buffer.find(b"\n")) < 0:
            self.sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 0.001))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:
                raise Unreachable(f"lost the connection to maintd: {exc.strerror or exc}") from None
            if not data:
                raise Unreachable("maintd closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
        return msgspec.json.decode(line)

    def request(self, type_: str, **fields: Any) -> Any:
        """Send one request and return its result; events that arrive meanwhile are kept."""
        request_id = self.send(type_, **fields)
        deadline = time.monotonic() + 60.0
        while True:
            message = self.read(deadline - time.monotonic())
            if message is None:
                raise Unreachable(f"maintd did not answer {type_} in time")
            if message.get("type") == "event":
                self.events.append(message)
                continue
            if message.get("id") != request_id:
                continue
            if message.get("ok"):
                return message.get("result")
            error = message.get("error") or {}
            raise DaemonError(error.get("code", "unknown"), error.get("message", "no message"))
