"""Job tracking by cgroup v2: one cgroup per job, entered by the child before it runs anything.

Where the cgroups go:

- under systemd with ``Delegate=yes`` (``$INVOCATION_ID`` set and the unit's own cgroup
  writable): the daemon moves itself into the leaf ``<unit cgroup>/daemon`` and makes
  ``<unit cgroup>/job-<job_id>`` beside it;
- otherwise (root, or a user with a delegated cgroup): ``<own cgroup>/maintd-<instance>/job-<job_id>``,
  where ``<instance>`` names the state directory (:func:`daemon.jobtree.instance_id`), so a
  restarted daemon finds the job cgroups the previous one left.

The cgroup2 hierarchy is found in ``/proc/self/mountinfo``: the unified ``/sys/fs/cgroup``
or a hybrid ``/sys/fs/cgroup/unified``. No controller is enabled, so the "no internal
processes" rule never applies.

The child enters its cgroup before it runs anything: it is spawned as ``/bin/sh -c 'echo 0
> "$0" || exit 125; exec "$@"' <cgroup.procs> <argv...>``, which writes itself into the
cgroup and then execs the job (same pid: the main process's exit code is still the job's). A
``preexec_fn`` doing the same write would make CPython fork the whole daemon instead of
using vfork/posix_spawn: measured with bench/jobs.py, that cost 3 times the throughput; the
shim's exec costs the child, not the daemon. Spawning straight into the cgroup
(``clone3(CLONE_INTO_CGROUP)``) would spare the child both the shim and the move, but
neither Python 3.11's ``os``/``subprocess`` nor glibc before 2.41
(``posix_spawnattr_setcgroup_np``) offers it; writing the pid from the daemon after the
spawn would need the child to wait for it, which a plain exec cannot. The move is most of
what tracking costs: on the 2-core machine of the benchmarks, ``sh -c 'exec true'`` took
1.2 ms a spawn one at a time and the shim 4.0 ms (likely the wait of a migration for the
write side of the kernel's cgroup_threadgroup_rwsem, which the mount option
``favordynmods`` makes cheap: not tried there); with 4 at once, bench/jobs.py's tracked
floor puts tracking at 0.4-0.7 ms a job.

The end of a job is ``populated 0`` in ``cgroup.events``, watched with inotify (the kernel
signals every change of the file), with a look every ``SAFETY_POLL`` seconds in case a
wake-up is missed; ``cgroup.kill`` kills the whole tree at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from pathlib import Path

import trio

from .jobtree import MARK, TrackingError, marker

log = logging.getLogger("maintd.jobtree")

SAFETY_POLL = 1.0  # at most this long between two looks at cgroup.events, inotify or not
POLL = 0.05  # the look's period where inotify cannot be had
DAEMON_LEAF = "daemon"

_IN_MODIFY = 0x2
try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no C library to load: poll instead
    _libc = None


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> Path:
    """Where the cgroup2 hierarchy is mounted (its root), or :class:`TrackingError`."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError as exc:
        raise TrackingError(f"cannot read {mountinfo}: {exc.strerror}") from None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) >= 5 and rest and rest[0] == "cgroup2" and fields[3] == "/":
            return Path(fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"))
    raise TrackingError("no cgroup2 file system is mounted")


def own_cgroup(path: str = "/proc/self/cgroup") -> str:
    """This process's cgroup v2 path (``/`` for the root), from the ``0::`` line."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("0::"):
                return line[3:] or "/"
    except OSError as exc:
        raise TrackingError(f"cannot read {path}: {exc.strerror}") from None
    raise TrackingError(f"no cgroup v2 line in {path}")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path / "cgroup.procs", os.W_OK)


class CgroupTracking:
    mechanism = "cgroup"

    def __init__(self, base: Path, instance: str) -> None:
        self.base = base
        self.instance = instance
        self.where = str(base)

    @classmethod
    def open(cls, instance: str) -> CgroupTracking:
        mount = cgroup2_mount()
        own = mount / own_cgroup().lstrip("/")
        if not own.is_dir():
            raise TrackingError(f"{own} is not there (another cgroup namespace?)")
        if not _writable(own):
            raise TrackingError(f"{own} is not writable (not root and not delegated)")
        delegated = bool(os.environ.get("INVOCATION_ID")) and own != mount
        base = own if delegated else own / f"maintd-{instance}"
        try:
            base.mkdir(exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"cannot make {base}: {exc.strerror}") from None
        if not _writable(base):
            raise TrackingError(f"{base} is not writable")
        if not (base / "cgroup.kill").exists():
            raise TrackingError(f"{base} has no cgroup.kill (Linux 5.14 or later)")
        if delegated:
            leaf = base / DAEMON_LEAF
            try:
                leaf.mkdir(exist_ok=True)
                (leaf / "cgroup.procs").write_text(str(os.getpid()))
            except OSError as exc:
                raise TrackingError(f"cannot move maintd into {leaf}: {exc.strerror}") from None
        return cls(base, instance)

    def describe(self) -> str:
        return f"cgroup v2 ({self.base})"

    def job(self, job_id: int) -> CgroupTree:
        path = self.base / f"job-{job_id}"
        try:
            path.mkdir()
        except FileExistsError:
            if _populated(path):
                raise OSError(f"{path} still has processes of an earlier run of job {job_id}") from None
        return CgroupTree(path, {MARK: marker(self.instance, job_id)})

    async def sweep(self, timeout: float) -> int:
        """Kill every job cgroup left below the base; wait (bounded) until each is empty."""
        left = [d for d in self.base.glob("job-*") if d.is_dir()]
        trees = [CgroupTree(d, {}) for d in left]
        found = sum(t.count() for t in trees)
        with trio.move_on_after(timeout):
            for tree in trees:
                await tree.kill_all()
        busy = [str(t.path) for t in trees if _populated(t.path)]
        for tree in trees:
            tree.close()
        if busy:
            raise TrackingError(f"processes left by an earlier maintd did not end within {timeout:g}s in {', '.join(busy)}")
        return found

    async def run(self) -> None:
        return None

    def close(self) -> None:
        """Remove the subtree made outside systemd (left if a job cgroup is still in it)."""
        if self.base.name.startswith("maintd-"):
            with contextlib.suppress(OSError):
                self.base.rmdir()


#: Joins the cgroup whose cgroup.procs is $0, then becomes the job (exit 125 if it cannot join)
ENTER = 'echo 0 > "$0" || exit 125; exec "$@"'


class CgroupTree:
    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path = path
        self.env = env

    def command(self, argv: list[str]) -> list[str]:
        return ["/bin/sh", "-c", ENTER, str(self.path / "cgroup.procs"), *argv]

    def spawned(self, pid: int) -> None:
        pass

    def main_reaped(self) -> None:
        pass

    def pids(self) -> list[int]:
        out: list[int] = []
        for folder, _dirs, _files in os.walk(self.path):
            with contextlib.suppress(OSError):
                out += [int(p) for p in Path(folder, "cgroup.procs").read_text().split()]
        return out

    def count(self) -> int:
        return len(self.pids())

    def signal(self, sig: int) -> int:
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return len(pids)

    async def wait_empty(self) -> None:
        """Several tasks may wait at once (the runner, a cancel): each has a watch of its own."""
        if not _populated(self.path):
            return
        watch = _watch(self.path / "cgroup.events")  # before the next look: no change is missed
        try:
            while _populated(self.path):
                if watch < 0:
                    await trio.sleep(POLL)
                    continue
                with trio.move_on_after(SAFETY_POLL):
                    await trio.lowlevel.wait_readable(watch)
                with contextlib.suppress(BlockingIOError):
                    os.read(watch, 4096)
        finally:
            if watch >= 0:
                trio.lowlevel.notify_closing(watch)
                os.close(watch)

    async def kill_all(self) -> int:
        if not _populated(self.path):
            return 0
        found = self.count()
        while _populated(self.path):
            try:
                (self.path / "cgroup.kill").write_bytes(b"1")
            except OSError as exc:
                log.warning("cannot kill %s: %s", self.path, exc.strerror)
            with trio.move_on_after(SAFETY_POLL):
                await self.wait_empty()
        return found

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
            return
        # the job made cgroups of its own below (as root it may): the deepest first
        for folder, _dirs, _files in sorted(os.walk(self.path), key=lambda w: -len(w[0])):
            try:
                os.rmdir(folder)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove %s: %s", folder, exc.strerror)


def _populated(path: Path) -> bool:
    try:
        fd = os.open(path / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return b"populated 1" in os.read(fd, 4096)
    finally:
        os.close(fd)


def _watch(path: Path) -> int:
    """An inotify descriptor that becomes readable when ``path`` changes; -1 if none can be had."""
    if _libc is None:
        return -1
    fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return -1
    if _libc.inotify_add_watch(fd, os.fsencode(path), _IN_MODIFY) < 0:
        os.close(fd)
        return -1
    return fd
