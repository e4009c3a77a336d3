"""The unit files in systemd/: they verify, they are locked down, and the stop fits.

``systemd-analyze verify`` checks that every ``Exec*=`` binary exists and is executable,
and loads the units they depend on. So each run builds a throw-away root: the two units in
``etc/systemd/system``, stub ``maintd``/``maintctl`` in ``usr/local/bin`` and stub targets
in ``usr/lib/systemd/system``, and runs ``systemd-analyze verify --root=ROOT maintd.service
maintd.socket``. That works with systemd 252 without touching the host; ``--man=no`` is
not needed because the units name no man page. ``security --offline=true`` reads the file
as it is.

Without systemd-analyze these tests skip, except under CI (``$CI`` set), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon import listener, paths, stopping
from daemon.config import DaemonConfig, parse_duration
from tests.conftest import Daemon, wait_for

UNITS = Path(__file__).resolve().parents[2] / "systemd"
MAX_EXPOSURE = 2.5
#: What the process manager's kill must leave on top of our own stop bounds (Home Assistant
#: keeps a margin the same way, for the time between stages and the interpreter's exit).
STOP_MARGIN = 10.0
STUB_TARGETS = (
    "sysinit.target",
    "basic.target",
    "shutdown.target",
    "sockets.target",
    "network-online.target",
    "multi-user.target",
)


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (apt-get install systemd)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set, so the unit tests must run")
        pytest.skip(message)
    return found


def unit(name: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists: a key may repeat (SystemCallFilter=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        else:
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


def one(section: list[tuple[str, str]], key: str) -> str:
    (value,) = [v for k, v in section if k == key]
    return value


def timespan(text: str) -> float:
    """systemd.time(7) spans such as ``90s``, ``1min 30s``, ``90`` (seconds)."""
    units = {"us": 1e-6, "ms": 1e-3, "": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), f"cannot read the time span {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_both_units_verify_clean(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    root = tmp_path / "root"
    system = root / "etc" / "systemd" / "system"
    system.mkdir(parents=True)
    for name in ("maintd.service", "maintd.socket"):
        shutil.copy(UNITS / name, system / name)
    bin_dir = root / "usr" / "local" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("maintd", "maintctl"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    lib = root / "usr" / "lib" / "systemd" / "system"
    lib.mkdir(parents=True)
    for target in STUB_TARGETS:
        (lib / target).write_text("[Unit]\nDescription=stub\nDefaultDependencies=no\n")
    result = subprocess.run(
        [analyze, "verify", f"--root={root}", "maintd.service", "maintd.socket"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stdout + result.stderr


def test_the_service_exposure_is_at_most_2_5() -> None:
    analyze = tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(UNITS / "maintd.service")],
        capture_output=True,
        timeout=60,
    )
    out = result.stdout.decode(errors="replace")
    match = re.search(r"Overall exposure level for maintd\.service: (\d+(?:\.\d+)?)", out)
    assert match, out + result.stderr.decode(errors="replace")
    assert float(match.group(1)) <= MAX_EXPOSURE, out


def test_cumulative_stop_timeout_less_than_timeout_stop_sec() -> None:
    """Home Assistant's test_cumulative_shutdown_timeout_less_than_supervisor, for systemd:
    the drain bound, the actor stop bound and a margin fit under TimeoutStopSec, so that
    systemd's SIGKILL never comes before the daemon's own stop."""
    service = unit("maintd.service")["Service"]
    timeout_stop = timespan(one(service, "TimeoutStopSec"))
    drain = parse_duration(DaemonConfig().stop_drain_timeout)
    assert drain + stopping.STOP_TIMEOUT + STOP_MARGIN < timeout_stop, (drain, stopping.STOP_TIMEOUT, STOP_MARGIN, timeout_stop)


def test_the_units_agree_with_the_daemon() -> None:
    service = unit("maintd.service")["Service"]
    socket_unit = unit("maintd.socket")["Socket"]
    assert one(service, "Type") == "notify" and one(service, "NotifyAccess") == "main"
    # SIGTERM to the daemon only: to every process it would kill the building jobs the drain waits for.
    assert one(service, "KillMode") == "mixed"
    assert one(service, "ExecReload") == "/usr/local/bin/maintctl reload"  # through the client, like fail2ban
    assert timespan(one(service, "WatchdogSec")) > 0
    # The socket unit's file lives in the RuntimeDirectory; it must survive the service's stop.
    assert one(service, "RuntimeDirectory") == "maintd" and one(service, "RuntimeDirectoryPreserve") == "yes"
    assert Path(one(socket_unit, "ListenStream")) == Path("/run/maintd") / paths.SOCKET_NAME
    assert one(socket_unit, "FileDescriptorName") == listener.FD_NAME
    assert one(socket_unit, "SocketMode") == "0660" and one(socket_unit, "SocketGroup") == "maintd"
    assert one(socket_unit, "Service") == "maintd.service"


def test_sysusers_and_tmpfiles_apply_to_an_empty_root(tmp_path: Path) -> None:
    sysusers, tmpfiles = tool("systemd-sysusers"), tool("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    made = subprocess.run(
        [sysusers, f"--root={root}", str(UNITS / "maintd.sysusers")], capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    passwd = (root / "etc" / "passwd").read_text()
    assert re.search(r"^maintd:x:\d+:\d+:", passwd, re.M) and re.search(
        r"^maintd:x:\d+:", (root / "etc" / "group").read_text(), re.M
    )
    created = subprocess.run(
        [tmpfiles, f"--root={root}", "--create", str(UNITS / "maintd.tmpfiles")], capture_output=True, text=True, timeout=60
    )
    assert created.returncode == 0, created.stderr
    assert oct((root / "run" / "maintd").stat().st_mode & 0o777) == "0o755"
    assert oct((root / "var" / "lib" / "maintd").stat().st_mode & 0o777) == "0o750"


# MemoryDenyWriteExecute=yes is a seccomp filter; the kernel's PR_SET_MDWE (Linux 6.3+) has the
# same effect on mmap/mprotect and is inherited by children, so the real daemon and its jobs
# can be run under it here without systemd.
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
MDWE_WRAPPER = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0: sys.exit(77)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
)


PROBE_JOB = """\
import mmap, subprocess, sys
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    verdict = "allowed"
except OSError:
    verdict = "refused"
git = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
open(sys.argv[1], "w").write(verdict + " " + git)
"""


def test_the_daemon_and_its_jobs_run_under_memory_deny_write_execute(make_daemon: Any, tmp_path: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", MDWE_WRAPPER, "-c", "pass"], timeout=30)
    if probe.returncode == 77:
        pytest.skip(f"this kernel has no PR_SET_MDWE ({os.uname().release}); cannot emulate MemoryDenyWriteExecute=")
    assert probe.returncode == 0
    script, verdict = tmp_path / "probe.py", tmp_path / "verdict"
    script.write_text(PROBE_JOB)
    config = (
        '[agents]\ncount = 1\n[[pipelines]]\nname = "p"\n[[pipelines.stages]]\nname = "s"\n'
        f'[[pipelines.stages.jobs]]\nname = "j"\ncommand = ["{sys.executable}", "{script}", "{verdict}"]\n'
    )
    d: Daemon = make_daemon(config=config, start=False)
    d.cmd = [sys.executable, "-c", MDWE_WRAPPER, *d.cmd[1:]]
    d.start()
    assert d.maintctl("trigger", "p").returncode == 0
    wait_for(verdict.exists, 15, "the job to run under MDWE")
    wait_for(lambda: verdict.read_text().startswith("refused git version"), 5, "the job's verdict")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0
    assert "Traceback" not in d.log_text()


def test_maintctl_of_a_group_member_finds_the_system_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member of group maintd runs maintctl as themselves: with no socket of their own, the
    system service's is the default; their own daemon's socket, once it exists, wins."""
    system = tmp_path / "run" / "control.sock"
    system.parent.mkdir()
    monkeypatch.setattr(paths, "SYSTEM_SOCKET", system)
    monkeypatch.setattr(paths.os, "geteuid", lambda: 1000)
    monkeypatch.delenv("MAINTD_SOCKET", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "user"))
    own = tmp_path / "user" / "maintd" / paths.SOCKET_NAME
    assert paths.default_socket() == own  # neither exists: the user's own, as before
    system.touch()
    assert paths.default_socket() == system
    own.parent.mkdir(parents=True)
    own.touch()
    assert paths.default_socket() == own
    monkeypatch.setenv("MAINTD_SOCKET", "/elsewhere.sock")
    assert paths.default_socket() == Path("/elsewhere.sock")
