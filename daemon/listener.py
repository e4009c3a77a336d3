"""The control socket's listener: bound here, with a stale socket file cleared first."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
from pathlib import Path

import trio

log = logging.getLogger("maintd.control")


class ListenerError(Exception):
    """The socket cannot be served; the message says why and what to do."""


async def open_unix_listener(path: Path, mode: int, group: str | None) -> trio.SocketListener:
    """Bind ``path`` with ``mode`` (and ``group`` when running as root) and listen.

    A socket file that nobody answers on is stale (a daemon that was killed) and is
    removed; one that answers belongs to a running maintd, which is an error.
    """
    _prepare(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        await sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot bind {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    if group and os.geteuid() == 0:
        with contextlib.suppress(KeyError, OSError):
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
    sock.listen(1024)
    return trio.SocketListener(sock)


def _prepare(path: Path) -> None:
    """Create the socket's folder and clear a stale socket (at start-up, before serving)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ListenerError(f"cannot create {path.parent}: {exc.strerror}") from None
    if path.exists() or path.is_symlink():
        if not path.is_socket():
            raise ListenerError(f"{path} exists and is not a socket; remove it or choose another --socket")
        if _answers(path):
            raise ListenerError(f"another maintd is serving {path}")
        log.info("removing stale socket %s", path)
        path.unlink()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
