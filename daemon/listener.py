"""The control socket's listener: handed over by systemd, or bound here.

Socket activation (sd_listen_fds(3)): when ``LISTEN_PID`` is this process, fds
``3 .. 3 + LISTEN_FDS - 1`` are open listening sockets, named by ``LISTEN_FDNAMES``. The one
named ``control`` (the socket unit's ``FileDescriptorName=``), else the first, is served.
systemd owns that socket file: it is neither chmod-ed nor unlinked here, and clients that
connect while maintd restarts wait in its backlog.

Otherwise the path is bound here, in a folder that only this daemon's user (or root) may
write in (:func:`check_socket_dir`), with a stale socket file cleared first; the daemon
unlinks it on exit.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import socket
import stat
from collections.abc import MutableMapping
from pathlib import Path

import msgspec
import trio

from .paths import describe_uid

log = logging.getLogger("maintd.control")

SD_LISTEN_FDS_START = 3
FD_NAME = "control"


class ListenerError(Exception):
    """The socket cannot be served; the message says why and what to do."""


class Listening(msgspec.Struct, frozen=True, kw_only=True):
    """What to serve, where it is, and whether systemd owns the socket file."""

    listener: trio.SocketListener
    path: Path
    activated: bool


async def open_control_listener(
    path: Path, mode: int, group: str | None, environ: MutableMapping[str, str] | None = None
) -> Listening:
    """The socket systemd passed, if any, else ``path`` bound here."""
    sock = activated_socket(environ)
    if sock is not None:
        bound = sock.getsockname()
        where = Path(bound) if isinstance(bound, str) and bound else path
        if where != path:
            log.info("serving the socket systemd passed, %s (not %s)", where, path)
        return Listening(listener=trio.SocketListener(trio.socket.from_stdlib_socket(sock)), path=where, activated=True)
    return Listening(listener=await open_unix_listener(path, mode, group), path=path, activated=False)


def activated_socket(environ: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The control socket from ``LISTEN_FDS``, or None if systemd passed none to this process.

    Unsets ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` and marks every passed fd
    close-on-exec, so that no child inherits them. Raises :class:`ListenerError` when the
    chosen fd is not a listening Unix stream socket.
    """
    env = os.environ if environ is None else environ
    pid, count, names = env.pop("LISTEN_PID", None), env.pop("LISTEN_FDS", None), env.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return None
    if pid != str(os.getpid()):
        log.info("LISTEN_PID=%s is not this process (%d): binding the socket here", pid, os.getpid())
        return None
    try:
        n = int(count)
    except ValueError:
        raise ListenerError(f"LISTEN_FDS={count!r} is not a number") from None
    if n <= 0:
        return None
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n))
    for fd in fds:
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
    labels = names.split(":") if names else []
    chosen = fds[labels.index(FD_NAME)] if FD_NAME in labels else fds[0]
    if n > 1:
        log.warning("systemd passed %d sockets (%s); serving fd %d, ignoring the rest", n, names or "unnamed", chosen)
    try:
        sock = socket.socket(fileno=chosen)
    except OSError as exc:
        raise ListenerError(f"fd {chosen} from systemd is not a socket: {exc.strerror}") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ListenerError(f"fd {chosen} from systemd is not a Unix stream socket; use ListenStream=/path in the socket unit")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ListenerError(f"fd {chosen} from systemd is not listening")
    log.info("socket activation: serving fd %d (%s)", chosen, sock.getsockname())
    return sock


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
    """Create the socket's folder, check that it is ours, and clear a stale socket (at
    start-up, before serving)."""
    try:
        _make_socket_dir(path.parent)
    except OSError as exc:
        raise ListenerError(f"cannot create {path.parent}: {exc.strerror}") from None
    check_socket_dir(path.parent)
    if path.exists() or path.is_symlink():
        if not path.is_socket():
            raise ListenerError(f"{path} exists and is not a socket; remove it or choose another --socket")
        if _answers(path):
            raise ListenerError(f"another maintd is serving {path}")
        log.info("removing stale socket %s", path)
        path.unlink()


def _make_socket_dir(folder: Path) -> None:
    """Create the socket's folder, if missing, as 0755 (the unit's RuntimeDirectoryMode).

    Whoever the socket's mode lets in must be able to reach it, and nobody else may
    write in the folder (a writable one lets anyone swap the socket for their own), whatever
    the umask: made 0700, then opened up to 0755.
    """
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        return
    os.chmod(folder, 0o755)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def check_socket_dir(folder: Path) -> None:
    """Refuse a socket folder that someone other than this daemon's user (or root) could
    write in, as OpenSSH's StrictModes refuses a loose key file.

    Whoever can write in the folder can move the socket aside and serve their own: clients
    would then take an impostor's "safe to restart". The default for a user without
    ``XDG_RUNTIME_DIR`` is ``/tmp/maintd-UID``, which any local user can create first. So
    the folder (and, if it is a symlink, the link too) must be owned by the daemon's user
    or by root, and writable by neither its group nor others (sticky or not: a sticky
    folder still lets anyone add a socket name while ours is missing). Raises
    :class:`ListenerError` whose message says how to fix it. Not for a socket that systemd
    passed: its folder is the unit's ``RuntimeDirectory``, systemd's to make.
    """
    me = os.geteuid()
    try:
        link = os.lstat(folder)
        st = os.stat(folder)
    except OSError as exc:
        raise ListenerError(f"cannot check the socket folder {folder}: {exc.strerror}") from None
    owners = [("is a symlink owned", link)] if stat.S_ISLNK(link.st_mode) else []
    for what, info in [*owners, ("is owned", st)]:
        if info.st_uid not in (me, 0):
            raise ListenerError(
                f"socket folder {folder} {what} by {describe_uid(info.st_uid)}, not by maintd's user "
                f"{describe_uid(me)}: its owner could replace the socket with their own; remove it (rm -r {folder}) "
                "and let maintd create it, or choose another --socket"
            )
    loose = stat.S_IMODE(st.st_mode) & 0o022
    if loose:
        who = " and ".join(w for bit, w in ((0o020, "its group"), (0o002, "everyone")) if loose & bit)
        raise ListenerError(
            f"socket folder {folder} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}): they could replace "
            f"the socket with their own; chmod go-w {folder}, or choose another --socket"
        )
