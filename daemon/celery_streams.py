"""A remote job's attempt as maintd follows it (:class:`Task`), and its Redis stream copied
to the job's log under the state directory (the file calls run in worker threads).

The log is made fresh when first opened for an attempt (after a restart it is written again
from the stream's start), through :func:`~daemon.statedir.open_job_log`: no symlink below the
state directory is followed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from daemon.statedir import open_job_log
from remote import contract

__all__ = ["Entries", "Task", "close_log", "open_log", "read_stream", "write_log"]

#: a stream's entries: (entry id, fields)
Entries = list[tuple[str, dict[bytes, bytes]]]


@dataclass(eq=False)
class Task:
    """One attempt of a job: a published task."""

    job_id: int
    task_id: str
    log_path: str
    reply_to: Any
    stream: str
    last_id: str = "0-0"
    started: bool = False
    told_started: bool = False
    pid: int | None = None
    node: str | None = None
    cancelled: bool = False
    result: contract.RemoteResult | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)
    log_fd: int | None = None
    #: how many times in a row its worker answered ``inspect`` without it
    misses: int = 0


def open_log(t: Task, root: str | None) -> int:
    """The job's log under the state directory, made fresh when first opened for this
    attempt (after a restart it is written again from the stream's start): a duplicate
    of the descriptor kept while the task is followed (worker thread)."""
    if t.log_fd is None:
        f = open_job_log(_LogSpec(workspace=os.path.dirname(t.log_path), log=t.log_path), root)  # type: ignore[arg-type]
        t.log_fd = os.dup(f.fileno())
        f.close()
    return os.dup(t.log_fd)


def close_log(t: Task) -> None:
    if t.log_fd is not None:
        with contextlib.suppress(OSError):
            os.close(t.log_fd)
        t.log_fd = None


def read_stream(client: Any, t: Task, root: str | None) -> tuple[str, Entries]:
    """The stream's entries after ``t.last_id``, written to the log (worker thread)."""
    entries = []
    last = t.last_id
    while True:
        batch = client.xrange(t.stream, min=f"({last}" if last != "0-0" else "-", count=1000)
        if not batch:
            break
        entries += [(eid.decode(), fields) for eid, fields in batch]
        last = entries[-1][0]
        if len(batch) < 1000:
            break
    write_log(t, entries, root)
    return last, entries


def write_log(t: Task, entries: Entries, root: str | None) -> None:
    """Append the output in ``entries`` to the job's log (worker thread)."""
    data = b"".join(fields.get(b"data", b"") for _, fields in entries)
    if data:
        fd = open_log(t, root)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


class _LogSpec(msgspec.Struct, frozen=True):
    """What :func:`~daemon.statedir.open_job_log` reads of a spec."""

    workspace: str
    log: str
