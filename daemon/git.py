"""git for the actors: polls of a material's branch and the ``.toml`` files of a config repo.

:class:`Git` answers :meth:`~actors.ports.ProcessPort.poll_material` and
:meth:`~actors.ports.ProcessPort.fetch_files` for :class:`daemon.processes.ProcessRunner`,
which calls it in a trio task and tells the answer. git runs in a session (and so a
process group) of its own, so a timeout reaches the whole tree it started (``ssh`` under
``git``); its failures become the ``error`` of the answer, never an exception.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence

import trio

from actors.jobs import FilesFetched, PollFinished

log = logging.getLogger("maintd.processes")  # the runner's logger, as before git had a module of its own

MAX_CONFIG_FILES = 100
MAX_CONFIG_FILE_BYTES = 256 * 1024


def killpg(pid: int, sig: int) -> None:
    """Signal the process group led by ``pid``; a group that is gone already is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def kill_group(proc: trio.Process) -> None:
    """``deliver_cancel`` for :func:`trio.run_process`: SIGKILL to the child's whole group."""
    killpg(proc.pid, signal.SIGKILL)


def _first_error_line(stderr: bytes) -> str | None:
    """The line of git's stderr that says what went wrong (a ``fatal:``/``error:`` line first)."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[0] if lines else None


def _git_failure(step: str, result: subprocess.CompletedProcess[bytes]) -> str:
    return _first_error_line(result.stderr) or f"git {step} exited with {result.returncode}"


class _Skipped(Exception):
    pass


class Git:
    """Runs ``executable`` (git) for polls and config-repo reads."""

    def __init__(self, executable: str = "git") -> None:
        self.executable = executable

    def _env(self) -> dict[str, str]:
        return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true", "LC_ALL": "C"}

    async def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        """Run git in a session of its own; when cancelled, its whole group is killed."""
        return await trio.run_process(
            [self.executable, *args],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=self._env(),
            start_new_session=True,
            deliver_cancel=kill_group,
        )

    # -- polls --------------------------------------------------------------------------------

    async def poll(self, key: str, url: str, branch: str, timeout: float) -> PollFinished:
        """The newest revision of ``branch`` at ``url``, or why not (never raises)."""
        try:
            return await self._poll_message(key, url, branch, timeout)
        except Exception as exc:
            log.exception("poll of %s failed", key)
            return PollFinished(key=key, error=f"poll failed: {exc}")

    async def _poll_message(self, key: str, url: str, branch: str, timeout: float) -> PollFinished:
        ref = f"refs/heads/{branch}"
        try:
            with trio.move_on_after(timeout) as scope:
                result = await self._run(["ls-remote", "--heads", "--", url, ref])
        except OSError as exc:
            return PollFinished(key=key, error=f"cannot run git: {exc}")
        if scope.cancelled_caught:
            return PollFinished(key=key, error=f"git ls-remote timed out after {timeout:g}s", timed_out=True)
        if result.returncode != 0:
            return PollFinished(key=key, error=_git_failure("ls-remote", result))
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            sha, _, name = line.partition("\t")
            if name.strip() == ref and sha:
                return PollFinished(key=key, revision=sha.strip())
        return PollFinished(key=key, error=f"branch {branch} not found")

    # -- config-repo files --------------------------------------------------------------------------------

    async def fetch(self, key: str, url: str, revision: str, timeout: float) -> FilesFetched:
        """The ``.toml`` files of ``url`` at ``revision``, or why not (never raises)."""
        try:
            return await self._fetch_message(key, url, revision, timeout)
        except Exception as exc:
            log.exception("fetch of %s at %s failed", key, revision)
            return FilesFetched(key=key, revision=revision, error=f"fetch failed: {exc}")

    async def _fetch_message(self, key: str, url: str, revision: str, timeout: float) -> FilesFetched:
        if not revision or revision.startswith("-") or any(c.isspace() or c == "\0" for c in revision):
            return FilesFetched(key=key, revision=revision, error=f"invalid revision {revision!r}")
        tmp = tempfile.mkdtemp(prefix="maintd-fetch-")
        try:
            with trio.move_on_after(timeout) as scope:
                files, error = await self._read_files(os.path.join(tmp, "repo.git"), url, revision)
            if scope.cancelled_caught:
                return FilesFetched(key=key, revision=revision, error=f"fetch timed out after {timeout:g}s")
            return FilesFetched(key=key, revision=revision, files=files, error=error)
        except OSError as exc:
            return FilesFetched(key=key, revision=revision, error=f"cannot run git: {exc}")
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(shutil.rmtree, tmp, True)

    async def _read_files(self, repo: str, url: str, revision: str) -> tuple[dict[str, str], str | None]:
        clone = await self._run(["clone", "--bare", "--quiet", "--", url, repo])
        if clone.returncode != 0:
            return {}, _git_failure("clone", clone)
        gd = f"--git-dir={repo}"
        parsed = await self._run([gd, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"])
        if parsed.returncode != 0 or not parsed.stdout.strip():
            return {}, f"revision {revision} not found"
        commit = parsed.stdout.decode().strip()
        tree = await self._run([gd, "ls-tree", "-r", "-l", "-z", "--full-tree", commit])
        if tree.returncode != 0:
            return {}, _git_failure("ls-tree", tree)
        wanted: list[tuple[str, str, str]] = []  # (path, blob id, size)
        for entry in tree.stdout.split(b"\0"):
            if not entry:
                continue
            meta, _, raw_path = entry.partition(b"\t")
            parts = meta.split()
            path = raw_path.decode("utf-8", "replace")
            # regular files only: no symlinks (120000) or submodules (commit)
            if len(parts) == 4 and parts[1] == b"blob" and parts[0] in (b"100644", b"100755") and path.endswith(".toml"):
                wanted.append((path, parts[2].decode(), parts[3].decode()))
        files: dict[str, str] = {}
        skipped: list[str] = []
        if len(wanted) > MAX_CONFIG_FILES:
            skipped.append(f"{len(wanted) - MAX_CONFIG_FILES} .toml files over the limit of {MAX_CONFIG_FILES}")
            wanted = wanted[:MAX_CONFIG_FILES]
        for path, blob, size in wanted:
            try:
                files[path] = await self._read_blob(gd, blob, size)
            except _Skipped as why:
                skipped.append(f"{path} ({why})")
        return files, (f"skipped: {'; '.join(skipped)}" if skipped else None)

    async def _read_blob(self, gd: str, blob: str, size: str) -> str:
        if not size.isdigit() or int(size) > MAX_CONFIG_FILE_BYTES:
            raise _Skipped(f"{size} bytes, over the limit of {MAX_CONFIG_FILE_BYTES}")
        result = await self._run([gd, "cat-file", "blob", blob])
        if result.returncode != 0:
            raise _Skipped(_git_failure("cat-file", result))
        try:
            return result.stdout.decode("utf-8")
        except UnicodeDecodeError:
            raise _Skipped("not UTF-8") from None
