"""How a peer is known to be one of this daemon's jobs' processes (issue 9, item 10).

On a fake /proc tree: a job's cgroup beside the daemon's, the ppid chain, the MAINTD_JOB
marker; and the cases that must not count (the daemon's own cgroup or marker when it runs
inside another maintd's job, a process that merely shares a root cgroup).
"""

from __future__ import annotations

import os
from pathlib import Path

from actors.errors import Forbidden
from daemon.auth import CMDLINE_BYTES, Peer, command_line, job_marker

DAEMON = 100


def proc(tmp: Path, pid: int, *, ppid: int = 1, cgroup: str = "/", env: dict[str, str] | None = None, cmd: bytes = b"") -> None:
    d = tmp / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_bytes(f"{pid} (a (weird) name) S {ppid} 1 1 0".encode())
    (d / "cgroup").write_text(f"0::{cgroup}\n")
    (d / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in (env or {}).items()))
    (d / "cmdline").write_bytes(cmd)


def test_a_job_is_known_by_its_cgroup_its_ancestry_or_its_marker(tmp_path: Path) -> None:
    proc(tmp_path, DAEMON, cgroup="/system.slice/maintd.service/daemon")
    proc(tmp_path, 200, cgroup="/system.slice/maintd.service/job-12")
    proc(tmp_path, 300, ppid=301)  # a grandchild of the daemon
    proc(tmp_path, 301, ppid=DAEMON)
    proc(tmp_path, 400, env={"MAINTD_JOB": "maintd:13"})
    proc(tmp_path, 500, env={"HOME": "/root"}, cgroup="/user.slice/session-1.scope")
    marker = lambda pid: job_marker(pid, DAEMON, str(tmp_path))  # noqa: E731
    assert marker(200) == "its cgroup is job-12"
    assert marker(300) == f"it runs under maintd (pid {DAEMON})"
    assert marker(400) == "MAINTD_JOB=maintd:13"
    assert marker(500) is None
    assert marker(999) is None  # gone already


def test_the_daemons_own_cgroup_and_marker_are_not_a_job_of_its_own(tmp_path: Path) -> None:
    # maintd itself runs inside another maintd's job (its own CI): so does the operator's maintctl.
    outer = {"MAINTD_JOB": "outer:7"}
    proc(tmp_path, DAEMON, cgroup="/ci/job-7", env=outer)
    proc(tmp_path, 600, cgroup="/ci/job-7", env=outer)
    assert job_marker(600, DAEMON, str(tmp_path)) is None


def test_a_job_is_refused_even_as_root_and_says_why() -> None:
    peer = Peer(4242, 0, 0, None, job="its cgroup is job-12", cmdline="maintctl disable")
    try:
        peer.require_admin("disable", "maintd")
    except Forbidden as exc:
        assert "refused to a job's own processes (its cgroup is job-12)" in exc.message
    else:
        raise AssertionError("a job's process was let through")
    assert peer.detail == "pid 4242: maintctl disable"
    Peer(4243, 0, 0, None).require_admin("disable", "maintd")  # root, not a job: allowed


def test_the_command_line_is_bounded_and_escaped(tmp_path: Path) -> None:
    proc(tmp_path, 700, cmd=b"maintctl\0--reason\0\x1b]0;x\x07\0")
    assert command_line(700, str(tmp_path)) == "maintctl --reason \\x1b]0;x\\x07"
    proc(tmp_path, 701, cmd=b"a" * (CMDLINE_BYTES * 4))
    assert command_line(701, str(tmp_path)) == "a" * CMDLINE_BYTES + " ..."
    assert "pytest" in command_line(os.getpid())  # the real /proc: this test run's own command line
