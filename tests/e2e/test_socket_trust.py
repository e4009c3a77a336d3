"""The socket folder and the daemon must be who they claim.

maintd refuses a socket folder that another user owns or that its group or everyone may
write in; maintctl refuses to believe a process on the socket that runs as neither root,
its own user, nor the owner of a socket folder only root could have handed out. Tests that
need a process of another user run it with ``setpriv`` as ``nobody`` and skip unless root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Daemon

NOBODY = 65534
SETPRIV = shutil.which("setpriv")
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
as_root = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None or SYSTEM_PYTHON is None,
    reason="needs root and setpriv: only root can run a process as another user or give a folder away",
)

# A fake maintd: answers every request with "maintenance on, safe to restart".
FAKE = r"""
import json, os, socket, sys
folder = sys.argv[1]
os.makedirs(folder, exist_ok=True)
path = os.path.join(folder, "control.sock")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
os.chmod(path, 0o777)
srv.listen()
print("ready", flush=True)
safe = {"enabled": True, "state": "drained", "safe_to_restart": True}
while True:
    conn, _ = srv.accept()
    with conn, conn.makefile("rb") as lines:
        for line in lines:
            request = json.loads(line)
            reply = {"id": request.get("id"), "ok": True, "result": {"maintenance": safe, "subsystems": []}}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                break
"""


def refused_start(d: Daemon) -> subprocess.CompletedProcess[str]:
    """Run the daemon's command line; it must exit on its own (the old code served instead)."""
    proc = subprocess.Popen(d.cmd, cwd=ROOT, env=d.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.communicate(timeout=20)
        pytest.fail("maintd served a socket in a folder it must refuse")
    return subprocess.CompletedProcess(d.cmd, proc.returncode, out, "")


@pytest.mark.parametrize(("mode", "who"), [(0o777, "its group and everyone"), (0o1777, "its group and everyone"),
                                           (0o757, "everyone"), (0o775, "its group")])  # fmt: skip
def test_maintd_refuses_a_socket_folder_others_may_write_in(make_daemon: Any, mode: int, who: str) -> None:
    d = make_daemon(start=False)
    folder = d.socket.parent
    folder.mkdir()
    folder.chmod(mode)
    result = refused_start(d)
    assert result.returncode == 1, result.stdout
    assert f"socket folder {folder} is writable by {who} (mode {mode:04o})" in result.stdout
    assert f"chmod go-w {folder}" in result.stdout
    assert "Traceback" not in result.stdout
    assert not d.socket.exists()


def test_maintd_makes_and_takes_its_own_folder(make_daemon: Any) -> None:
    d = make_daemon()
    st = d.socket.parent.stat()
    assert st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o755
    assert d.client().request("ping")["ok"]


@as_root
@pytest.mark.parametrize("symlink", [False, True], ids=["folder", "symlink"])
def test_maintd_refuses_a_socket_folder_another_user_owns(make_daemon: Any, tmp_path: Path, symlink: bool) -> None:
    d = make_daemon(start=False)
    folder = d.socket.parent
    if symlink:  # the link is another user's, the folder it points to is ours
        target = tmp_path / "ours"
        target.mkdir(mode=0o755)
        folder.symlink_to(target)
        os.lchown(folder, NOBODY, NOBODY)
    else:
        folder.mkdir(mode=0o755)
        os.chown(folder, NOBODY, NOBODY)
    result = refused_start(d)
    assert result.returncode == 1, result.stdout
    owned = "is a symlink owned" if symlink else "is owned"
    assert f"socket folder {folder} {owned} by " in result.stdout and f"(uid {NOBODY})" in result.stdout
    assert f"rm -r {folder}" in result.stdout
    assert not (target if symlink else folder).joinpath("control.sock").exists()


@pytest.fixture
def fake_daemon() -> Iterator[Any]:
    """Start a fake maintd as ``nobody`` in ``FOLDER`` (made by it when missing)."""
    procs: list[subprocess.Popen[str]] = []

    def start(folder: Path) -> Path:
        assert SETPRIV is not None and SYSTEM_PYTHON is not None
        cmd = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON, "-c", FAKE, str(folder)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={"PATH": "/usr/bin:/bin"})
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", line + proc.stdout.read()
        return folder / "control.sock"

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder like /tmp: everyone may create names in it (sticky, 1777)."""
    path = Path(tempfile.mkdtemp(prefix="maintd-trust-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def maintctl(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maintctl", "--socket", str(socket), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


@as_root
@pytest.mark.parametrize("command", [["wait", "--timeout", "10s"], ["status"], ["disable"]])
def test_maintctl_refuses_a_daemon_of_another_user_in_a_folder_anyone_could_make(
    fake_daemon: Any, shared_tmp: Path, command: list[str]
) -> None:
    # Another local user made /tmp/maintd-UID first and serves a fake socket in it.
    socket = fake_daemon(shared_tmp / f"maintd-{os.geteuid()}")
    assert (socket.parent.stat().st_uid, socket.parent.stat().st_mode & 0o777) == (NOBODY, 0o755)
    result = maintctl(socket, *command)
    assert result.returncode == 3, result
    assert "Safe to restart" not in result.stdout + result.stderr
    assert f"refusing to trust {socket}: it is served by user nobody (uid {NOBODY})" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@as_root
def test_maintctl_trusts_the_user_root_gave_the_socket_folder_to(fake_daemon: Any, shared_tmp: Path) -> None:
    # Like /run/maintd under /run: root made the folder and gave it to the daemon's user.
    run = shared_tmp / "run"
    run.mkdir(mode=0o755)
    (run / "maintd").mkdir(mode=0o755)
    os.chown(run / "maintd", NOBODY, NOBODY)
    socket = fake_daemon(run / "maintd")
    result = maintctl(socket, "wait", "--timeout", "10s")
    assert result.returncode == 0, result
    assert result.stdout == "Safe to restart.\n"


def test_maintctl_trusts_its_own_daemon(daemon: Daemon) -> None:
    assert maintctl(daemon.socket, "enable").returncode == 0
    waited = maintctl(daemon.socket, "wait", "--timeout", "10s")  # nothing runs: drained at once
    assert waited.returncode == 0, waited
    assert waited.stdout == "Safe to restart.\n"


@as_root
def test_a_wait_that_reconnects_refuses_a_daemon_of_another_user_in_its_place(
    tmp_path: Path, fake_daemon: Any, shared_tmp: Path
) -> None:
    """``wait`` reconnects after maintd goes away (issue 13); what answers then is checked as at
    the start: another user's fake in a re-made folder is refused (exit 3), never believed safe."""
    d = Daemon(tmp_path / "d")
    folder = shared_tmp / f"maintd-{os.geteuid()}"
    d.cmd[d.cmd.index(str(d.socket))] = str(folder / "control.sock")
    d.socket = folder / "control.sock"
    d.start()
    waiting = subprocess.Popen(
        [sys.executable, "-m", "maintctl", "--socket", str(d.socket), "wait"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stdout is not None
        assert "maintenance mode off" in waiting.stdout.readline()  # subscribed to the real daemon
        assert d.proc is not None
        d.proc.kill()
        d.proc.wait()
        shutil.rmtree(folder)
        fake_daemon(folder)  # nobody makes the folder again and serves "safe to restart"
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:  # it believed the fake, or still retries: the test fails, nothing is left
            waiting.kill()
            waiting.wait()
        d.stop()
    assert waiting.returncode == 3, (out, err)
    assert "Safe to restart" not in out
    assert f"refusing to trust {d.socket}: it is served by user nobody" in err
    assert "Traceback" not in err
