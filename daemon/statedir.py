"""Files below the state directory, reached without following a symlink below it.

A job runs as the daemon's user, so it can write in the state directory: it can plant a
symlink, a FIFO or a hard link where a later job's log or workspace will be, or swap its
own log (or a folder above it) for one (``ln -sf /etc/shadow "$LOG"``). The daemon must
not write, truncate or read a file outside through one, nor make a folder there. So every
path is walked from the state directory one component at a time with ``O_NOFOLLOW``
(:func:`walk`: nothing can be swapped between a check and the open), and the file at the
end is opened relative to its folder. The state directory itself may be a symlink.

- :func:`open_job_log`: the job's workspace and its fresh log, for the child to write;
- :func:`append_to_log`: a line at the end of a job's log (why it could not start);
- :func:`open_log`: a job's log, read-only, for ``maintctl logs``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from actors.jobs import JobSpec

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LogRefused(Exception):
    """A job's log that is not a regular file with one link below ``STATE/logs`` (the reason)."""


def walk(root: str | os.PathLike[str], parts: Sequence[str], *, make: bool) -> int:
    """An fd of the folder ``root/parts...``, each component opened with ``O_NOFOLLOW``.

    ``make``: a missing folder is made, a symlink in the way is removed and a folder made in
    its place (that touches nothing outside), anything else in the way is an OSError that
    says so. Otherwise a symlink or a file in the way is :class:`LogRefused`, and a missing
    folder FileNotFoundError.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts, 1):
            if make:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            try:
                child = os.open(part, _FOLDER_FLAGS, dir_fd=fd)
            except OSError as exc:  # ELOOP (a symlink) or ENOTDIR (a file) in the way, or other
                if not make:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise LogRefused(f"{part} in its path is not a folder (a symlink?)") from None
                    raise
                if not _is_symlink(part, fd):
                    raise OSError(f"{os.path.join(root, *parts[:depth])} is in the way: not a folder") from None
                os.unlink(part, dir_fd=fd)
                os.mkdir(part, dir_fd=fd)
                child = os.open(part, _FOLDER_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dirs(root: str, path: str) -> int:
    """``mkdir -p path`` below ``root`` without following symlinks; an fd of the last folder."""
    relative = os.path.relpath(os.path.abspath(path), root)
    parts = [] if relative == "." else relative.split(os.sep)
    if relative.startswith(os.pardir) or os.path.isabs(relative):
        raise OSError(f"{path} is outside the state directory {root}")
    return walk(root, parts, make=True)


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def open_job_log(spec: JobSpec, root: str | None = None) -> IO[bytes]:
    """Make the job's workspace and open its log (fresh) for the child to write.

    Under ``root`` no symlink below it is followed: a symlink in the way of a folder is
    removed, anything else in the way stops the job with the reason; whatever is at the
    log's name (a link, a FIFO, an old log) is removed, never written through.
    """
    if root is None:
        Path(spec.workspace).mkdir(parents=True, exist_ok=True)
        Path(spec.log).parent.mkdir(parents=True, exist_ok=True)
        return open(spec.log, "wb")  # closed by the caller once the child has it
    os.close(make_dirs(root, spec.workspace))
    folder = make_dirs(root, os.path.dirname(spec.log))
    try:
        name = os.path.basename(spec.log)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=folder)  # a link (hard or symbolic), a FIFO or an old log: never written through
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=folder)
    except IsADirectoryError:
        raise OSError(f"{spec.log} is a directory, in the way of the job's log") from None
    except PermissionError as exc:
        raise OSError(f"cannot make the job's log {spec.log}: {exc.strerror}") from None
    finally:
        os.close(folder)
    return os.fdopen(fd, "wb")


def append_to_log(path: str, line: str, root: str | None = None) -> None:
    """Best effort: ``maintd: line`` at the end of a job's log (made if missing).

    Under ``root`` its folders are reached as :func:`open_job_log` does, and the line is
    written only to a regular file with one link: never through a symlink, a hard link or
    a FIFO planted at the log's name.
    """
    data = f"maintd: {line}\n".encode()
    try:
        if root is None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.write(data)
            return
        folder = make_dirs(root, os.path.dirname(path))
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            fd = os.open(os.path.basename(path), flags, 0o666, dir_fd=folder)
        finally:
            os.close(folder)
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                os.write(fd, data)
        finally:
            os.close(fd)
    except OSError:
        pass


def open_log(state_dirs: tuple[Path, ...], log_path: str) -> int:
    """A read-only fd on ``log_path``, only if it is a regular file below ``STATE/logs``.

    Anyone who may open the control socket may ask for a job's log, so it is walked with
    :func:`walk` (no symlink below ``STATE`` is followed), the file is opened with
    ``O_NONBLOCK`` (a FIFO does not hang the thread) and it must be a regular file with one
    link. ``state_dirs`` are the spellings of the state directory (as given, resolved) that
    ``log_path`` may start with. Raises FileNotFoundError (no log yet) or :class:`LogRefused`.
    """
    path = Path(log_path)
    for base in state_dirs:
        if path.is_relative_to(base / "logs"):
            parts = path.relative_to(base).parts
            break
    else:
        raise LogRefused("it is not under the state directory's logs folder")
    if any(part in ("", ".", "..") for part in parts):
        raise LogRefused("its path has `..` in it")
    fd = walk(base, parts[:-1], make=False)
    try:
        try:
            file_fd = os.open(parts[-1], os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LogRefused("it is a symlink") from None
            raise
    finally:
        os.close(fd)
    info = os.fstat(file_fd)
    if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
        return file_fd
    os.close(file_fd)
    raise LogRefused("it is not a regular file" if not stat.S_ISREG(info.st_mode) else "it has other hard links")
