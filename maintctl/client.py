"""A small blocking client for the control socket (no trio, no msgspec: maintctl must start fast).

The standard library's json reads and writes the lines: a request and a reply are one
small object each, and importing msgspec would cost more than all of them. The socket is
``_socket.socket``, the C type that :class:`socket.socket` extends with file objects and
enums: the module :mod:`socket` costs a tenth of a bare interpreter's start-up (its enums
and selectors), and this client needs none of what it adds.
"""

from __future__ import annotations

import _socket
import itertools
import json
import os
import stat
import struct
import time

from daemon.paths import describe_uid

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing itself costs a few ms of start-up
    from typing import Any


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


def check_daemon(sock: _socket.socket, path: str) -> None:
    """Refuse to believe whoever answers on ``sock`` unless it runs as root, as this user, or
    as the owner of the socket's folder when that folder could only have been given to them.

    Who listens is read from the kernel (``SO_PEERCRED``, the listener's credentials), not
    from anything it says. The folder's owner counts only when the folder sits in a parent
    that nobody but root (or this user) may write in, like ``/run/maintd`` under ``/run``:
    anyone can create ``/tmp/maintd-UID`` first, and then they own it. Raises
    :class:`Untrusted` (exit 3: no trustworthy daemon can be reached).
    """
    _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i")))
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
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
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
        request = {"id": request_id, "type": type_, **{k: v for k, v in fields.items() if v is not None}}
        line = json.dumps(request, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
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
        try:
            return json.loads(line)
        except ValueError:  # also invalid UTF-8
            raise Unreachable(f"maintd sent a line that is not JSON: {line[:80]!r}") from None

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
