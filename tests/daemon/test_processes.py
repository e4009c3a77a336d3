"""The process runner with real git repositories and real processes, in real time.

Nothing sleeps to synchronise: every wait is on a message (or a polled condition) under
``trio.fail_after``.
"""

from __future__ import annotations

import math
import os
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.jobs import FilesFetched, JobExited, JobSpec, JobStarted, PollFinished
from daemon import jobstart
from daemon.bridge import Bridge
from daemon.git import MAX_CONFIG_FILE_BYTES
from daemon.processes import ProcessRunner
from daemon.statedir import open_job_log

WAIT = 15.0  # the most any one message may take to come


class Inbox:
    """A fake ActorRef: ``tell`` puts the message on a channel the test reads."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Any](math.inf)

    def tell(self, message: Any) -> None:
        self._send.send_nowait(message)

    async def next(self, timeout: float = WAIT) -> Any:
        with trio.fail_after(timeout):
            return await self._receive.receive()

    def pending(self) -> list[Any]:
        out = []
        while True:
            try:
                out.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                return out


class DeadRef:
    """An actor that has stopped: every tell raises."""

    def tell(self, message: Any) -> None:
        raise RuntimeError("actor is dead")


# -- git fixtures (sync: set-up before the trio test runs) ------------------------------------


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    out = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def commit(work: Path, files: dict[str, str | bytes], message: str) -> str:
    for name, content in files.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    git("add", "-A", cwd=work)
    git("-c", "user.name=Test", "-c", "user.email=test@example.invalid", "commit", "-q", "-m", message, cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


class Repo:
    def __init__(self, tmp: Path) -> None:
        self.work = tmp / "work"
        self.work.mkdir()
        git("init", "-q", "-b", "main", cwd=self.work)
        self.first = commit(
            self.work,
            {
                "pipelines/build.toml": 'name = "build"\n',
                "deploy.toml": 'name = "deploy"\n',
                "README.md": "not config\n",
                "big.toml": "x" * (MAX_CONFIG_FILE_BYTES + 1),
                "binary.toml": b"\xff\xfe\x00",
            },
            "first",
        )
        self.second = commit(self.work, {"pipelines/build.toml": 'name = "build2"\n'}, "second")
        self.bare = tmp / "remote.git"
        git("clone", "-q", "--bare", str(self.work), str(self.bare), cwd=tmp)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path)


@pytest.fixture
def hanging_git(tmp_path: Path) -> tuple[Path, Path]:
    """A fake git that hangs, with a background child in its group whose pid it writes down."""
    script = tmp_path / "fake-git"
    pidfile = tmp_path / "child.pid"
    script.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {pidfile}.tmp\nmv {pidfile}.tmp {pidfile}\nexec sleep 30\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, pidfile


@pytest.fixture
async def make_runner(nursery: trio.Nursery) -> AsyncIterator[Callable[..., ProcessRunner]]:
    made: list[ProcessRunner] = []

    def make(**kwargs: Any) -> ProcessRunner:
        runner = ProcessRunner(Bridge(trio.lowlevel.current_trio_token()), nursery, **kwargs)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        await runner.aclose()


@pytest.fixture
def runner(make_runner: Callable[..., ProcessRunner]) -> ProcessRunner:
    return make_runner()


def spec_for(tmp: Path, job_id: int = 1, **fields: Any) -> JobSpec:
    base: dict[str, Any] = {
        "job_id": job_id,
        "run_id": 1,
        "pipeline": "p",
        "pipeline_counter": 1,
        "stage": "s",
        "stage_counter": 1,
        "job": "j",
        "workspace": str(tmp / "ws" / f"job{job_id}"),
        "log": str(tmp / "logs" / f"job{job_id}" / "console.log"),
        "agent": "local",
    }
    return JobSpec(**{**base, **fields})


def read(path: str | Path) -> str:
    return Path(path).read_text()


def is_gone(pid: int) -> bool:
    """``pid`` is no longer a live process (gone, or a zombie nobody has reaped yet)."""
    try:
        state = read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


async def until(predicate: Callable[[], Any], what: str) -> None:
    """Poll a condition outside the runner (another process's doing) under a deadline."""
    try:
        with trio.fail_after(WAIT):
            while True:
                if predicate():
                    return
                await trio.sleep(0.01)
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {WAIT}s waiting for {what}") from None


async def gone(pid: int) -> None:
    await until(lambda: is_gone(pid), f"process {pid} to go")


# -- polls ----------------------------------------------------------------------------------


async def test_a_poll_returns_the_head_of_the_branch(runner: ProcessRunner, repo: Repo) -> None:
    inbox = Inbox()
    # called from another thread, as an actor would
    await trio.to_thread.run_sync(runner.poll_material, inbox, "m1", str(repo.bare), "main", 10.0)
    assert await inbox.next() == PollFinished(key="m1", revision=repo.second)


async def test_a_missing_branch_is_an_error(runner: ProcessRunner, repo: Repo) -> None:
    inbox = Inbox()
    runner.poll_material(inbox, "m1", str(repo.bare), "nope", 10.0)
    assert await inbox.next() == PollFinished(key="m1", error="branch nope not found")


async def test_a_bad_url_is_an_error_not_a_crash(runner: ProcessRunner, tmp_path: Path, repo: Repo) -> None:
    inbox = Inbox()
    runner.poll_material(inbox, "bad", str(tmp_path / "no-such-repo"), "main", 10.0)
    runner.poll_material(inbox, "dash", "--upload-pack=touch /tmp/pwned", "main", 10.0)
    got = {m.key: m for m in [await inbox.next(), await inbox.next()]}
    for key in ("bad", "dash"):
        assert got[key].revision is None
        assert got[key].error and got[key].error.startswith("fatal:"), got[key]
        assert not got[key].timed_out
    # and the runner still works
    runner.poll_material(inbox, "m1", str(repo.bare), "main", 10.0)
    assert (await inbox.next()).revision == repo.second


async def test_a_missing_git_binary_is_an_error(make_runner: Callable[..., ProcessRunner], tmp_path: Path) -> None:
    runner = make_runner(git=str(tmp_path / "no-git"))
    inbox = Inbox()
    runner.poll_material(inbox, "m1", "whatever", "main", 10.0)
    message = await inbox.next()
    assert message.error.startswith("cannot run git:")


async def test_a_hanging_remote_is_killed_at_the_timeout(
    make_runner: Callable[..., ProcessRunner], hanging_git: tuple[Path, Path]
) -> None:
    script, pidfile = hanging_git
    runner = make_runner(git=str(script))
    inbox = Inbox()
    started = trio.current_time()
    runner.poll_material(inbox, "m1", "ssh://example.invalid/repo", "main", 0.5)
    message = await inbox.next()
    assert message.key == "m1"
    assert message.timed_out
    assert message.revision is None
    assert "timed out" in message.error
    assert trio.current_time() - started < 10
    # the background child was in the fake git's process group: killed with it
    await gone(int(read(pidfile)))


# -- config-repo files ---------------------------------------------------------------------


async def test_fetch_files_reads_the_toml_files_at_a_revision(runner: ProcessRunner, repo: Repo) -> None:
    inbox = Inbox()
    runner.fetch_files(inbox, "cfg", str(repo.bare), repo.first, 20.0)
    message = await inbox.next()
    assert isinstance(message, FilesFetched)
    assert message.key == "cfg" and message.revision == repo.first
    assert message.files == {"pipelines/build.toml": 'name = "build"\n', "deploy.toml": 'name = "deploy"\n'}
    assert message.error is not None
    assert "big.toml" in message.error and "binary.toml" in message.error and "README" not in message.error

    runner.fetch_files(inbox, "cfg", str(repo.bare), repo.second, 20.0)
    message = await inbox.next()
    assert message.files["pipelines/build.toml"] == 'name = "build2"\n'


async def test_fetch_files_leaves_no_temporary_clone(
    runner: ProcessRunner, repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr("tempfile.tempdir", None)
    inbox = Inbox()
    runner.fetch_files(inbox, "cfg", str(repo.bare), repo.first, 20.0)
    assert (await inbox.next()).files
    assert list(tmp.iterdir()) == []


async def test_fetch_files_of_an_unknown_revision_or_url_is_an_error(runner: ProcessRunner, repo: Repo, tmp_path: Path) -> None:
    inbox = Inbox()
    runner.fetch_files(inbox, "cfg", str(repo.bare), "0" * 40, 20.0)
    message = await inbox.next()
    assert message.files == {} and message.error == f"revision {'0' * 40} not found"

    runner.fetch_files(inbox, "cfg", str(tmp_path / "nowhere"), repo.first, 20.0)
    message = await inbox.next()
    assert message.files == {} and message.error.startswith("fatal:")

    runner.fetch_files(inbox, "cfg", str(repo.bare), "--output=/tmp/x", 20.0)
    message = await inbox.next()
    assert message.files == {} and "invalid revision" in message.error


async def test_fetch_files_is_bounded_by_its_timeout(
    make_runner: Callable[..., ProcessRunner], hanging_git: tuple[Path, Path]
) -> None:
    script, pidfile = hanging_git
    runner = make_runner(git=str(script))
    inbox = Inbox()
    runner.fetch_files(inbox, "cfg", "ssh://example.invalid/repo", "abc123", 0.5)
    message = await inbox.next()
    assert message.files == {} and "timed out" in message.error
    await gone(int(read(pidfile)))


# -- jobs -------------------------------------------------------------------------------------


async def run_to_end(runner: ProcessRunner, spec: JobSpec) -> tuple[JobStarted, JobExited]:
    inbox = Inbox()
    runner.start_job(inbox, spec)
    started = await inbox.next()
    assert isinstance(started, JobStarted), started
    exited = await inbox.next()
    assert isinstance(exited, JobExited), exited
    return started, exited


async def test_a_jobs_output_goes_to_its_log_with_its_env(
    runner: ProcessRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAINTD_SECRET_OF_THE_DAEMON", "leak")
    spec = spec_for(tmp_path, argv=("sh", "-c", "env; echo oops >&2; pwd"), env={"GREETING": "hello world"})
    started, exited = await run_to_end(runner, spec)
    assert exited == JobExited(job_id=1, returncode=0)
    assert started.job_id == 1 and started.pid > 0
    lines = read(spec.log).splitlines()
    assert "GREETING=hello world" in lines
    assert f"HOME={spec.workspace}" in lines
    assert any(line.startswith("PATH=") for line in lines)
    assert not any("MAINTD_SECRET_OF_THE_DAEMON" in line for line in lines)
    assert "oops" in lines  # stderr too
    assert lines[-1] == spec.workspace  # it ran in its workspace


async def test_a_job_runs_in_its_own_process_group(runner: ProcessRunner, tmp_path: Path) -> None:
    code = "import os; print(os.getpid(), os.getpgid(0), os.getsid(0))"
    spec = spec_for(tmp_path, argv=(sys.executable, "-c", code))
    started, exited = await run_to_end(runner, spec)
    assert exited.returncode == 0
    pid, pgid, sid = map(int, read(spec.log).split())
    assert pid == pgid == sid == started.pid
    assert pgid != os.getpgid(0)


async def test_a_nonexistent_executable_is_reported_not_a_crash(runner: ProcessRunner, tmp_path: Path) -> None:
    inbox = Inbox()
    spec = spec_for(tmp_path, argv=(str(tmp_path / "no-such-program"), "x"))
    runner.start_job(inbox, spec)
    message = await inbox.next()
    assert isinstance(message, JobExited)
    assert message.job_id == 1 and message.returncode is None
    assert message.error.startswith("cannot start:")
    assert "cannot start:" in read(spec.log)
    assert runner.running() == 0
    # the runner goes on
    _, exited = await run_to_end(runner, spec_for(tmp_path, job_id=2, argv=("true",)))
    assert exited.returncode == 0


async def test_a_workspace_that_cannot_be_made_is_reported(runner: ProcessRunner, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    inbox = Inbox()
    runner.start_job(inbox, spec_for(tmp_path, argv=("true",), workspace=str(tmp_path / "file" / "ws")))
    message = await inbox.next()
    assert message.returncode is None and message.error.startswith("cannot start:")


async def test_a_job_start_crosses_to_a_worker_thread_once(
    runner: ProcessRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its folders, log and spawn in one worker-thread call (trio's open_process took a second one)."""
    calls: list[str] = []
    run_sync = trio.to_thread.run_sync

    async def counted(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await run_sync(fn, *args, **kwargs)

    monkeypatch.setattr(trio.to_thread, "run_sync", counted)
    spec = spec_for(tmp_path, argv=("sh", "-c", "echo started"))
    _, exited = await run_to_end(runner, spec)
    assert exited == JobExited(job_id=1, returncode=0)
    assert read(spec.log) == "started\n"
    assert len(calls) == 1, calls


async def test_a_look_at_returncode_ends_a_wait_under_way(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A stop reads ``returncode`` while the run waits: if it finds the process gone it closes
    the pidfd, and the run's wait ends with the exit code (not ClosedResourceError)."""
    spec = spec_for(tmp_path, argv=("sleep", "30"))
    proc, tree, error = jobstart.start(spec, None, None)
    assert proc is not None and tree is None and error is None
    codes: list[int] = []
    done = trio.Event()

    async def waiter() -> None:
        codes.append(await proc.wait())
        done.set()

    nursery.start_soon(waiter)
    await trio.testing.wait_all_tasks_blocked()
    os.kill(proc.pid, signal.SIGKILL)
    deadline = trio.current_time() + WAIT
    while proc.returncode is None:  # no checkpoint: the waiter cannot run before the look
        assert trio.current_time() < deadline, "the process did not end"
    with trio.fail_after(WAIT):
        await done.wait()
    assert codes == [-signal.SIGKILL]


async def test_stop_kills_a_job_that_ignores_sigterm_after_the_grace(runner: ProcessRunner, tmp_path: Path) -> None:
    inbox = Inbox()
    spec = spec_for(tmp_path, shell='trap "" TERM; echo ready; sleep 30')
    runner.start_job(inbox, spec)
    assert isinstance(await inbox.next(), JobStarted)
    await wait_for_log(spec, "ready")
    assert runner.running() == 1
    began = trio.current_time()
    await trio.to_thread.run_sync(runner.stop_job, 1, 0.5)
    message = await inbox.next()
    assert message == JobExited(job_id=1, returncode=-signal.SIGKILL)
    assert trio.current_time() - began >= 0.5
    assert runner.running() == 0


async def test_stop_ends_a_job_that_honours_sigterm_with_it(runner: ProcessRunner, tmp_path: Path) -> None:
    inbox = Inbox()
    runner.start_job(inbox, spec_for(tmp_path, argv=("sleep", "30")))
    assert isinstance(await inbox.next(), JobStarted)
    runner.stop_job(1, 20.0)
    message = await inbox.next(timeout=10)
    assert message == JobExited(job_id=1, returncode=-signal.SIGTERM)


async def test_stop_reaches_the_whole_group(runner: ProcessRunner, tmp_path: Path) -> None:
    inbox = Inbox()
    spec = spec_for(tmp_path, shell="sleep 30 & echo $! > child.pid; wait")
    runner.start_job(inbox, spec)
    assert isinstance(await inbox.next(), JobStarted)
    pidfile = Path(spec.workspace) / "child.pid"
    await until(lambda: pidfile.exists() and read(pidfile).strip(), "the child's pid")
    runner.stop_job(1, 5.0)
    message = await inbox.next()
    assert message.returncode == -signal.SIGTERM
    await gone(int(read(pidfile)))


async def test_a_stop_right_behind_the_start_is_not_lost(runner: ProcessRunner, tmp_path: Path) -> None:
    inbox = Inbox()
    runner.start_job(inbox, spec_for(tmp_path, argv=("sleep", "30")))
    runner.stop_job(1, 5.0)
    assert isinstance(await inbox.next(), JobStarted)
    assert await inbox.next() == JobExited(job_id=1, returncode=-signal.SIGTERM)


async def test_stopping_a_job_that_is_not_running_is_ignored(runner: ProcessRunner, tmp_path: Path) -> None:
    runner.stop_job(99, 0.1)
    _, exited = await run_to_end(runner, spec_for(tmp_path, argv=("true",)))
    runner.stop_job(1, 0.1)
    assert exited.returncode == 0
    # still usable
    _, exited = await run_to_end(runner, spec_for(tmp_path, job_id=2, argv=("false",)))
    assert exited.returncode == 1


async def test_report_jobs_tells_again_how_each_job_stands(runner: ProcessRunner, tmp_path: Path) -> None:
    """For restarted agents whose inbox (with a JobStarted or JobExited in it) was lost."""
    first = Inbox()
    runner.start_job(first, spec_for(tmp_path, argv=("sleep", "30")))
    started = await first.next()
    _, exited = await run_to_end(runner, spec_for(tmp_path, job_id=2, argv=("sh", "-c", "exit 3")))
    again = Inbox()
    runner.report_jobs(again, (1, 2, 99))
    assert [await again.next() for _ in range(3)] == [
        started,  # still running: its exit comes later, to its reply_to
        exited,  # ended: the same exit again
        JobExited(job_id=99, returncode=None, error="lost: the process runner has no record of this job"),
    ]
    runner.stop_job(1, 5.0)
    assert await first.next() == JobExited(job_id=1, returncode=-signal.SIGTERM)
    runner.report_jobs(again, (1,))
    assert await again.next() == JobExited(job_id=1, returncode=-signal.SIGTERM)


async def test_report_jobs_right_behind_a_start_tells_nothing_twice(runner: ProcessRunner, tmp_path: Path) -> None:
    inbox = Inbox()
    runner.start_job(inbox, spec_for(tmp_path, argv=("sleep", "30")))
    runner.report_jobs(inbox, (1,))  # still starting: its JobStarted comes as usual
    assert isinstance(await inbox.next(), JobStarted)
    runner.stop_job(1, 5.0)
    assert await inbox.next() == JobExited(job_id=1, returncode=-signal.SIGTERM)
    assert inbox.pending() == []


async def test_a_jobs_timeout_kills_it(make_runner: Callable[..., ProcessRunner], tmp_path: Path) -> None:
    runner = make_runner(kill_grace=0.5)
    _, exited = await run_to_end(runner, spec_for(tmp_path, argv=("sleep", "30"), timeout=0.3))
    assert exited == JobExited(job_id=1, returncode=-signal.SIGTERM, timed_out=True)
    _, exited = await run_to_end(runner, spec_for(tmp_path, job_id=2, shell='trap "" TERM; sleep 30', timeout=0.3))
    assert exited == JobExited(job_id=2, returncode=-signal.SIGKILL, timed_out=True)


async def test_the_shell_is_used_only_when_asked_for(runner: ProcessRunner, tmp_path: Path) -> None:
    literal = spec_for(tmp_path, argv=("echo", "$HOME", ";", "echo", "no"))
    _, exited = await run_to_end(runner, literal)
    assert exited.returncode == 0
    assert read(literal.log) == "$HOME ; echo no\n"

    shell = spec_for(tmp_path, job_id=2, shell="echo $HOME")
    _, exited = await run_to_end(runner, shell)
    assert exited.returncode == 0
    assert read(shell.log) == f"{shell.workspace}\n"


async def test_aclose_kills_every_live_job(make_runner: Callable[..., ProcessRunner], tmp_path: Path) -> None:
    runner = make_runner()
    inbox = Inbox()
    for job_id in (1, 2):
        ready = tmp_path / f"trapped-{job_id}"
        runner.start_job(inbox, spec_for(tmp_path, job_id=job_id, shell=f'trap "" TERM; touch {ready}; sleep 30'))
    started = [await inbox.next(), await inbox.next()]
    assert all(isinstance(m, JobStarted) for m in started)
    assert runner.running() == 2
    with trio.fail_after(WAIT):  # a SIGTERM before the trap is set would end the shell: -15, not -9
        while not all((tmp_path / f"trapped-{job_id}").exists() for job_id in (1, 2)):  # noqa: ASYNC110
            await trio.sleep(0.01)
    with trio.fail_after(WAIT):
        await runner.aclose()
    assert runner.running() == 0
    exits = sorted([await inbox.next(), await inbox.next()], key=lambda m: m.job_id)
    assert [(m.job_id, m.returncode) for m in exits] == [(1, -signal.SIGKILL), (2, -signal.SIGKILL)]
    runner.start_job(inbox, spec_for(tmp_path, job_id=3, argv=("true",)))
    refused = await inbox.next()
    assert refused.job_id == 3 and refused.returncode is None and "closed" in refused.error


async def test_a_dead_reply_to_does_not_crash_the_runner(runner: ProcessRunner, tmp_path: Path, repo: Repo) -> None:
    runner.start_job(DeadRef(), spec_for(tmp_path, argv=("true",)))
    runner.poll_material(DeadRef(), "m1", str(repo.bare), "main", 10.0)
    # the nursery lives on: the next work is answered
    _, exited = await run_to_end(runner, spec_for(tmp_path, job_id=2, argv=("true",)))
    assert exited.returncode == 0


async def wait_for_log(spec: JobSpec, text: str) -> None:
    await until(lambda: text in read(spec.log), f"{text!r} in the log")


# -- a job's workspace and log under the state directory: no symlink followed ---------------


def planted(tmp_path: Path) -> tuple[Path, Path, JobSpec]:
    """A state directory, a file and a folder outside it, and a job's spec inside it."""
    root = tmp_path / "state"
    root.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("ORIGINAL\n")
    return root, outside, spec_for(root)


@pytest.mark.parametrize("what", ["symlink", "hard link", "fifo", "old log"])
def test_a_jobs_log_is_made_fresh_and_nothing_in_its_place_is_written_through(tmp_path: Path, what: str) -> None:
    root, outside, spec = planted(tmp_path)
    log = Path(spec.log)
    log.parent.mkdir(parents=True)
    if what == "symlink":
        log.symlink_to(outside)
    elif what == "hard link":
        os.link(outside, log)
    elif what == "fifo":
        os.mkfifo(log)  # opened for writing without a reader, this would block a thread
    else:
        log.write_text("the last run's log\n")
    with open_job_log(spec, str(root)) as f:
        f.write(b"new\n")
    assert log.read_text() == "new\n" and not log.is_symlink() and log.stat().st_nlink == 1
    assert outside.read_text() == "ORIGINAL\n"


def test_a_symlinked_folder_on_the_way_is_replaced_not_followed(tmp_path: Path) -> None:
    root, _outside, spec = planted(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "ws").symlink_to(elsewhere)
    (root / "logs").symlink_to(elsewhere)
    open_job_log(spec, str(root)).close()
    assert list(elsewhere.iterdir()) == []
    assert Path(spec.workspace).is_dir() and not (root / "ws").is_symlink()
    assert Path(spec.log).is_file() and not (root / "logs").is_symlink()


def test_a_file_or_folder_in_the_way_stops_the_job_with_the_reason(tmp_path: Path) -> None:
    root, _outside, spec = planted(tmp_path)
    (root / "ws").write_text("not a folder\n")
    with pytest.raises(OSError, match="is in the way: not a folder"):
        open_job_log(spec, str(root))
    (root / "ws").unlink()
    Path(spec.log).mkdir(parents=True)
    with pytest.raises(OSError, match="is a directory"):
        open_job_log(spec, str(root))


def test_a_path_outside_the_state_directory_is_refused(tmp_path: Path) -> None:
    root, _outside, _spec = planted(tmp_path)
    with pytest.raises(OSError, match="outside the state directory"):
        open_job_log(spec_for(tmp_path / "elsewhere"), str(root))


def plant_at_log(root: Path, outside: Path, log: Path, what: str) -> None:
    """A symlink or a hard link to ``outside`` at ``log``, or its folder a symlink to a folder outside."""
    if what == "symlinked folder":
        elsewhere = outside.parent / "elsewhere"
        (elsewhere / log.parent.name).mkdir(parents=True)
        (root / "logs").symlink_to(elsewhere)
        return
    log.parent.mkdir(parents=True)
    if what == "symlink":
        log.symlink_to(outside)
    else:
        os.link(outside, log)


@pytest.mark.parametrize("what", ["symlink", "hard link", "symlinked folder"])
async def test_a_start_that_fails_writes_its_reason_through_nothing_planted_at_the_log(
    make_runner: Callable[..., ProcessRunner], tmp_path: Path, what: str
) -> None:
    root, outside, _spec = planted(tmp_path)
    spec = spec_for(root)  # neither argv nor shell: the start fails before the log is made
    plant_at_log(root, outside, Path(spec.log), what)
    inbox = Inbox()
    make_runner(root=root).start_job(inbox, spec)
    message = await inbox.next()
    assert isinstance(message, JobExited) and message.error == "cannot start: the job has neither argv nor shell"
    assert outside.read_text() == "ORIGINAL\n"
    if what == "symlinked folder":
        assert list((tmp_path / "elsewhere").rglob("*.log")) == []
        assert read(spec.log) == f"maintd: {message.error}\n"  # in a real folder made in the symlink's place
