"""A throw-away machine with a real systemd as PID 1, for the units as an operator installs them.

``systemd-nspawn -D / --volatile=yes --boot`` boots this machine's own ``/usr`` on an empty
root (a tmpfs that is gone when the container stops): ``/etc``, ``/var``, ``/run`` and
``/tmp`` are the container's own, so nothing here touches the host's files. Never boot
systemd outside such a container: its boot-time ``systemd-tmpfiles`` would empty the real
``/tmp`` under every running process.

- ``--register=no --keep-unit``: no systemd runs on the host to register with.
- ``--private-network``: the container's loopback is its own, so its HTTP port cannot meet
  a port of the host's or of another test's.
- The container's PID 1 is found as the ``systemd`` process below the nspawn process, and
  every command runs in its namespaces with ``nsenter -t PID1 -a`` and a clean environment.
- Bounded: nspawn runs under ``timeout``; :meth:`Machine.close` powers the machine off, and in
  a ``finally`` SIGKILLs its PID 1 and nspawn (killing nspawn alone does not end the
  container).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.conftest import wait_for

#: What commands inside the machine see: no variable of the test runner's leaks in.
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": ""}
#: The longest a machine may live: nspawn is started under `timeout` with this.
LIFETIME = 240


class BootError(Exception):
    """The container did not come up; the message has nspawn's own output."""


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class Machine:
    """One booted container. ``binds`` are (host path, container path) pairs, read-only."""

    def __init__(self, name: str, binds: Sequence[tuple[Path, str]], log: Path) -> None:
        self.name = name
        self.log_path = log
        argv = [
            "timeout", "--kill-after=5", str(LIFETIME),
            "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--private-network",
            "-D", "/", "--volatile=yes", "--boot", "--console=passive", f"--machine={name}",
        ]  # fmt: skip
        argv += [f"--bind-ro={host}:{inside}" for host, inside in binds]
        argv += ["--", "systemd.firstboot=off"]
        self._log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid1 = 0
        try:
            self.pid1 = self._find_pid1(timeout=20)
            self._wait_booted(timeout=60)
        except BaseException:
            self.close()
            raise

    # -- start-up ----------------------------------------------------------------------

    def _find_pid1(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BootError(f"systemd-nspawn exited with {self.proc.returncode}: {self.output()}")
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
                except OSError:
                    continue
                if comm != "systemd":
                    continue
                pid = parent = int(entry.name)
                for _ in range(3):  # nspawn -> (its child) -> systemd
                    parent = _parent(parent) or 0
                    if parent == self.proc.pid:
                        return pid
            time.sleep(0.05)
        raise BootError(f"no systemd below systemd-nspawn after {timeout}s: {self.output()}")

    def _wait_booted(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.05)
        raise BootError(f"the machine did not boot within {timeout}s (state {state!r}): {self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-2000:]

    # -- commands ----------------------------------------------------------------------

    def run(
        self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 60, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the machine (as ``user`` with its groups, through setpriv; else as root)."""
        if user is not None:  # not runuser: the machine's empty /etc has no PAM configuration
            argv = ("setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--reset-env", "--", *argv)
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", *argv],
            env=ENV,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{shlex.join(argv)} exited with {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-ec", script, **kwargs)

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        self.run("sh", "-ec", 'mkdir -p "$(dirname "$1")"; cat > "$1"; chmod "$2" "$1"', "write", path, mode, input=text)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", *args, check=False).stdout

    def wait_for(self, predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
        return wait_for(predicate, timeout, what)

    # -- the end -----------------------------------------------------------------------

    def close(self) -> None:
        """Power off (bounded), then kill whatever is left: PID 1 first, then nspawn."""
        try:
            if self.pid1 and self.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    subprocess.run(
                        ["nsenter", "-t", str(self.pid1), "-a", "systemctl", "poweroff", "--no-block"],
                        env=ENV, capture_output=True, timeout=10, check=False,
                    )  # fmt: skip
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=20)
        finally:
            if self.pid1:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid1, signal.SIGKILL)
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            self._log.close()
