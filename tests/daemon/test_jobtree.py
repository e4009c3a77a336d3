"""A job is every process it starts: the process runner on both tracking mechanisms.

Each test runs on ``cgroup`` (skipped where no writable cgroup2 exists, except under
``CI=true`` as root on a machine that mounts one read-write: there it fails) and on
``subreaper`` (forced, as ``[agents] process_tracking = "subreaper"`` does). The jobs escape
their process group the ways real tools do and write their pids down; the test checks
``/proc``. Nothing sleeps to synchronise: every wait is on a message or a polled condition.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.jobs import JobExited, JobStarted
from daemon import cgroup, jobtree
from daemon.jobtree import Tracking, TrackingError
from tests.conftest import alive
from tests.daemon.test_processes import Inbox, spec_for

MECHANISMS = ("cgroup", "subreaper")


def cgroup_or_skip(tmp: Path) -> None:
    """Skip the cgroup variant where it cannot run; fail under CI where it must."""
    try:
        cgroup.CgroupTracking.open(jobtree.instance_id(tmp)).close()
    except TrackingError as exc:
        expected = os.geteuid() == 0 and _rw_cgroup2_mounted()
        if os.environ.get("CI") == "true" and expected:
            pytest.fail(f"CI=true, root and a read-write cgroup2 is mounted, yet: {exc}")
        pytest.skip(f"no writable cgroup2 here: {exc}")


def _rw_cgroup2_mounted() -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"] and "rw" in left.split()[5].split(","):
            return True
    return False


def make_tracking(mechanism: str, tmp: Path) -> Tracking:
    if mechanism == "cgroup":
        cgroup_or_skip(tmp)
    return jobtree.setup(mechanism, tmp)


def memory_of(pid: int) -> bytes | None:
    """What ``/proc/PID/environ`` holds (empty once an exiting process has let its memory go); None if gone."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return None


async def all_gone(pids: list[int]) -> None:
    """Once the job has ended, none of ``pids`` runs: each is gone, or (SIGKILLed, the kernel
    still tearing it down) has no memory left, so it cannot run the job's code; and those go
    within a moment."""
    left = [p for p in pids if alive(p)]
    for pid in left:
        assert memory_of(pid) in (b"", None), f"process {pid} of the job still runs"
    await until(lambda: not [p for p in left if alive(p)], "the killed processes to be gone", timeout=5)


async def until(predicate: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    """Poll ``predicate`` (without blocking the trio loop) until it is true; its value."""
    with trio.fail_after(timeout):
        while not (value := predicate()):  # noqa: ASYNC110 - what it waits for is in /proc: no event to wait on
            await trio.sleep(0.01)
    return value


async def pids_in(path: Path, count: int = 1) -> list[int]:
    """Wait for ``count`` pids written (one a line) to ``path``."""

    def read() -> list[int] | None:
        try:
            pids = [int(x) for x in path.read_text().split()]
        except (OSError, ValueError):
            return None
        return pids if len(pids) >= count else None

    return await until(read, f"{count} pid(s) in {path}")


@pytest.fixture(params=MECHANISMS)
async def tracking(request: Any, tmp_path: Path) -> AsyncIterator[Tracking]:
    t = make_tracking(request.param, tmp_path / "state")
    yield t
    t.close()


@pytest.fixture
async def runner_for(nursery: trio.Nursery, tracking: Tracking) -> AsyncIterator[Callable[..., Any]]:
    from daemon.bridge import Bridge
    from daemon.processes import ProcessRunner

    made: list[ProcessRunner] = []

    def make(**kwargs: Any) -> ProcessRunner:
        runner = ProcessRunner(Bridge(trio.lowlevel.current_trio_token()), nursery, tracking=tracking, **kwargs)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        await runner.aclose()


PY = sys.executable
#: Each starts ``sleep 60`` out of the job's process group (or session) and writes its pid to $P.
ESCAPES = {
    "setsid": 'setsid sleep 60 & echo $! > "$P.tmp"; mv "$P.tmp" "$P"',
    "setpgid": f"""{PY} -c 'import os, time
os.setpgid(0, 0)
open(os.environ["P"] + ".tmp", "w").write(str(os.getpid())); os.rename(os.environ["P"] + ".tmp", os.environ["P"])
time.sleep(60)' &
""",
    "double-fork": f"""{PY} -c 'import os, time
if os.fork(): os._exit(0)
os.setsid()
if os.fork(): os._exit(0)
open(os.environ["P"] + ".tmp", "w").write(str(os.getpid())); os.rename(os.environ["P"] + ".tmp", os.environ["P"])
time.sleep(60)'
""",
    "nohup": 'nohup sleep 60 > /dev/null 2>&1 & echo $! > "$P.tmp"; mv "$P.tmp" "$P"',
}
#: The main process waits for the escaped one to be up: it ends after it, not before
UP = '\nwhile [ ! -e "$P" ]; do sleep 0.01; done\n'


async def started(inbox: Inbox) -> JobStarted:
    message = await inbox.next()
    assert isinstance(message, JobStarted), message
    return message


async def no_exit_for(inbox: Inbox, seconds: float) -> None:
    """Nothing is told for ``seconds``: a bounded wait for a negative."""
    with trio.move_on_after(seconds):
        message = await inbox.next(seconds + 1)
        raise AssertionError(f"told {message} while a process of the job still runs")


@pytest.mark.parametrize("escape", sorted(ESCAPES))
async def test_an_escaped_process_keeps_the_job_running_with_leftovers_wait(
    runner_for: Callable[..., Any], tmp_path: Path, escape: str
) -> None:
    runner = runner_for(leftovers="wait")
    pidfile = tmp_path / "escaped.pid"
    spec = spec_for(tmp_path, shell=ESCAPES[escape] + UP, env={"P": str(pidfile)})
    inbox = Inbox()
    runner.start_job(inbox, spec)
    main = await started(inbox)
    (escaped,) = await pids_in(pidfile)
    await until(lambda: not alive(main.pid), "the main process to exit")
    assert alive(escaped)
    await no_exit_for(inbox, 0.5)
    assert runner.running() == 1
    os.kill(escaped, signal.SIGKILL)
    exited = await inbox.next()
    assert isinstance(exited, JobExited)
    assert (exited.returncode, exited.leftovers, exited.error) == (0, 0, None)
    assert runner.running() == 0


@pytest.mark.parametrize("escape", sorted(ESCAPES))
async def test_leftovers_are_killed_after_the_grace_and_the_log_says_so(
    runner_for: Callable[..., Any], tmp_path: Path, escape: str
) -> None:
    grace = 0.5
    runner = runner_for(leftovers="kill", kill_grace=grace)
    pidfile = tmp_path / "escaped.pid"
    spec = spec_for(tmp_path, shell=ESCAPES[escape] + UP, env={"P": str(pidfile)})
    inbox = Inbox()
    runner.start_job(inbox, spec)
    main = await started(inbox)
    (escaped,) = await pids_in(pidfile)
    await until(lambda: not alive(main.pid), "the main process to exit")
    ended_main = time.monotonic()
    exited = await inbox.next()
    assert isinstance(exited, JobExited)
    assert time.monotonic() - ended_main >= grace * 0.8  # not before the grace (wait_for polls: a margin)
    assert (exited.returncode, exited.leftovers) == (0, 1)
    assert not alive(escaped)
    assert "maintd: killed 1 leftover process\n" in Path(spec.log).read_text()  # noqa: ASYNC240


async def test_the_marker_is_in_every_jobs_environment(
    runner_for: Callable[..., Any], tracking: Tracking, tmp_path: Path
) -> None:
    runner = runner_for()
    spec = spec_for(tmp_path, job_id=42, argv=(PY, "-c", "import os; print(os.environ['MAINTD_JOB'])"))
    inbox = Inbox()
    runner.start_job(inbox, spec)
    await started(inbox)
    assert isinstance(await inbox.next(), JobExited)
    assert Path(spec.log).read_text().strip() == f"{jobtree.instance_id(tmp_path / 'state')}:42"  # noqa: ASYNC240
    if tracking.mechanism == "cgroup":
        assert tracking.where.endswith(f"maintd-{jobtree.instance_id(tmp_path / 'state')}")


IGNORE_TERM = f"""exec {PY} -c '
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pids = [os.getpid()]
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        time.sleep(60)
        os._exit(0)
    pids.append(pid)
open(os.environ["P"] + ".tmp", "w").write("\\n".join(map(str, pids)))
os.rename(os.environ["P"] + ".tmp", os.environ["P"])
time.sleep(60)'
"""


async def test_cancel_ends_a_tree_that_ignores_sigterm(runner_for: Callable[..., Any], tmp_path: Path) -> None:
    runner = runner_for()
    pidfile = tmp_path / "tree.pid"
    spec = spec_for(tmp_path, shell=IGNORE_TERM, env={"P": str(pidfile)})
    inbox = Inbox()
    runner.start_job(inbox, spec)
    await started(inbox)
    pids = await pids_in(pidfile, 4)
    runner.stop_job(spec.job_id, 0.3)
    exited = await inbox.next()
    assert isinstance(exited, JobExited) and exited.returncode == -signal.SIGKILL
    await all_gone(pids)


async def test_cancel_ends_a_tree_20_levels_deep(runner_for: Callable[..., Any], tmp_path: Path) -> None:
    runner = runner_for()
    pidfile = tmp_path / "deep.pid"
    script = tmp_path / "deep.sh"
    # each level starts the next in a session of its own, writes its pid and waits
    script.write_text(
        textwrap.dedent(
            f"""\
            echo $$ >> "$P"
            if [ "$1" -gt 0 ]; then setsid /bin/sh {script} $(($1 - 1)) & fi
            exec sleep 60
            """
        )
    )
    spec = spec_for(tmp_path, argv=("/bin/sh", str(script), "19"), env={"P": str(pidfile)})
    inbox = Inbox()
    runner.start_job(inbox, spec)
    await started(inbox)
    pids = await pids_in(pidfile, 20)
    assert all(alive(p) for p in pids)
    runner.stop_job(spec.job_id, 0.5)
    exited = await inbox.next()
    assert isinstance(exited, JobExited)
    await all_gone(pids)


async def test_a_timeout_kills_the_whole_tree(runner_for: Callable[..., Any], tmp_path: Path) -> None:
    runner = runner_for(kill_grace=0.3)
    pidfile = tmp_path / "escaped.pid"
    spec = spec_for(tmp_path, shell=ESCAPES["setsid"] + "; exec sleep 60", env={"P": str(pidfile)}, timeout=0.5)
    inbox = Inbox()
    runner.start_job(inbox, spec)
    await started(inbox)
    (escaped,) = await pids_in(pidfile)
    exited = await inbox.next()
    assert isinstance(exited, JobExited) and exited.timed_out
    assert not alive(escaped)


async def test_aclose_kills_every_process_of_every_job(runner_for: Callable[..., Any], tmp_path: Path) -> None:
    runner = runner_for(leftovers="wait")
    inbox = Inbox()
    escaped = []
    for job_id in (1, 2):
        pidfile = tmp_path / f"escaped{job_id}.pid"
        runner.start_job(inbox, spec_for(tmp_path, job_id=job_id, shell=ESCAPES["double-fork"], env={"P": str(pidfile)}))
        escaped += await pids_in(pidfile)
    await runner.aclose()
    assert runner.running() == 0
    assert [p for p in escaped if alive(p)] == []


async def test_the_sweep_kills_what_an_earlier_daemon_left(tracking: Tracking, tmp_path: Path) -> None:
    """A job tree of a daemon that died (made here by hand) is gone once the sweep returns."""
    tree = await trio.to_thread.run_sync(tracking.job, 7)
    pidfile = tmp_path / "left.pid"
    proc = await trio.lowlevel.open_process(
        tree.command(["/bin/sh", "-c", ESCAPES["setsid"]]),
        env={**os.environ, **tree.env, "P": str(pidfile)},
        start_new_session=True,
    )
    tree.spawned(proc.pid)
    await proc.wait()
    tree.main_reaped()
    (left,) = await pids_in(pidfile)
    found = await tracking.sweep(10)
    assert found == 1
    assert not alive(left)
    tree.close()


def test_cgroup_asked_for_where_there_is_none_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cgroup2() -> Path:
        raise TrackingError("no cgroup2 file system is mounted")

    monkeypatch.setattr(cgroup, "cgroup2_mount", no_cgroup2)
    with pytest.raises(TrackingError, match="no cgroup2"):
        jobtree.setup("cgroup", tmp_path)


def test_the_cgroup2_mount_is_found_unified_or_hybrid(tmp_path: Path) -> None:
    hybrid = tmp_path / "hybrid"
    hybrid.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    unified = tmp_path / "unified"
    unified.write_text("30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    assert cgroup.cgroup2_mount(str(hybrid)) == Path("/sys/fs/cgroup/unified")
    assert cgroup.cgroup2_mount(str(unified)) == Path("/sys/fs/cgroup")


async def test_a_missing_executable_is_still_a_start_error(runner_for: Callable[..., Any], tmp_path: Path) -> None:
    runner = runner_for()
    spec = spec_for(tmp_path, argv=("no-such-program-here",))
    inbox = Inbox()
    runner.start_job(inbox, spec)
    exited = await inbox.next()
    assert isinstance(exited, JobExited) and exited.returncode is None
    assert exited.error is not None and "No such file or directory" in exited.error


def test_an_unknown_mechanism_is_a_one_line_config_error(tmp_path: Path) -> None:
    from daemon import config

    path = tmp_path / "maintd.toml"
    path.write_text('[agents]\nprocess_tracking = "ptrace"\n')
    with pytest.raises(config.ConfigError, match=r"\$\.agents\.process_tracking"):
        config.load(path)


DELEGATED = """
import json, os, sys
from daemon import cgroup
t = cgroup.CgroupTracking.open("0123456789ab")
print(json.dumps({"base": str(t.base), "own": open("/proc/self/cgroup").read()}))
"""


def test_under_systemd_maintd_moves_into_a_daemon_leaf_and_puts_jobs_beside_it(tmp_path: Path) -> None:
    """A unit's delegated cgroup, made by hand: maintd (a child here) moves itself into
    ``daemon`` and its job cgroups are made beside it, not in a subtree of their own."""
    import json
    import subprocess

    cgroup_or_skip(tmp_path)
    mount = cgroup.cgroup2_mount()
    unit = mount / cgroup.own_cgroup().lstrip("/") / f"test-unit-{os.getpid()}.service"
    unit.mkdir()
    try:
        enter = f'echo 0 > "{unit}/cgroup.procs" && exec "$@"'
        out = subprocess.run(
            ["/bin/sh", "-c", enter, "sh", sys.executable, "-c", DELEGATED],
            env={**os.environ, "INVOCATION_ID": "0" * 32, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        seen = json.loads(out.stdout)
        assert seen["base"] == str(unit)
        assert f"0::/{unit.relative_to(mount)}/daemon\n" in seen["own"]
    finally:
        (unit / "daemon").rmdir()
        unit.rmdir()
