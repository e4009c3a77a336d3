"""Fixtures for the tests under a real systemd: a venv as the README installs it, and a booted
machine with the shipped units, sysusers and tmpfiles snippets installed.

The machine's ``/usr`` is the host's (read-only), so maintd cannot be linked into
``/usr/local/bin`` there as the README does: it is installed in ``/opt/maintd`` (the README's
venv path, bound into the machine) and a drop-in points ``ExecStart=``/``ExecReload=`` there,
as an operator who installs elsewhere would with ``systemctl edit``. Everything else is the
shipped files, unchanged.

Without root, ``systemd-nspawn`` or ``/usr/bin/python3`` these tests skip, except under CI
(``CI=true``), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.systemd.machine import BootError, Machine

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
PREFIX = "/opt/maintd"
MAINTCTL = f"{PREFIX}/bin/maintctl"
SYSTEM_PYTHON = "/usr/bin/python3"  # only /usr is the host's inside the machine

DROP_IN = f"""\
# /opt/maintd instead of /usr/local/bin: /usr is the host's, read-only, in the machine.
[Service]
ExecStart=
ExecStart={PREFIX}/bin/maintd --config /etc/maintd/maintd.toml
ExecReload=
ExecReload={PREFIX}/bin/maintctl reload
"""


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI=true, so the tests under a real systemd must run")
    pytest.skip(why)


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python3 -m venv`` + ``pip install .`` with the system's Python, for /opt/maintd."""
    if os.geteuid() != 0:
        _unavailable("systemd-nspawn needs root")
    for tool in ("systemd-nspawn", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} is not installed (apt-get install systemd-container util-linux)")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        _unavailable(f"{SYSTEM_PYTHON} is missing: the machine has only the host's /usr")
    base = tmp_path_factory.mktemp("opt")
    source = base / "src"
    for part in ("actors", "daemon", "maintctl", "remote"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    target = base / "maintd"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(target)], check=True, env=env)
    subprocess.run(
        [str(target / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(source)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=sys.stderr,
    )
    for script in ("maintd", "maintctl"):  # bound at /opt/maintd in the machine
        path = target / "bin" / script
        lines = path.read_text().splitlines(keepends=True)
        path.write_text(f"#!{PREFIX}/bin/python3\n" + "".join(lines[1:]))
    return target


@pytest.fixture
def machine(venv: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Machine]:
    """A booted machine with maintd's units installed (not started) and a git repository at
    /srv/repo, owned by maintd, for a material."""
    name = "maintd-" + request.node.name.replace("_", "-")[:40].strip("-")
    try:
        box = Machine(name, [(venv, PREFIX)], tmp_path / "nspawn.log")
    except BootError as exc:
        _unavailable(f"systemd-nspawn cannot boot here: {exc}")
        raise
    try:
        box.write("/etc/systemd/system/maintd.service", (UNITS / "maintd.service").read_text())
        box.write("/etc/systemd/system/maintd.socket", (UNITS / "maintd.socket").read_text())
        box.write("/etc/systemd/system/maintd.service.d/opt.conf", DROP_IN)
        box.write("/etc/sysusers.d/maintd.conf", (UNITS / "maintd.sysusers").read_text())
        box.write("/etc/tmpfiles.d/maintd.conf", (UNITS / "maintd.tmpfiles").read_text())
        box.run("systemd-sysusers")
        box.run("systemd-tmpfiles", "--create", "/etc/tmpfiles.d/maintd.conf")
        box.sh(
            "mkdir -p /srv/repo && cd /srv/repo && git init -q -b main"
            " && git -c user.email=ci@example.com -c user.name=ci commit -q --allow-empty -m first"
            " && chown -R maintd:maintd /srv/repo"
        )
        # The machine's network is its loopback only (--private-network): nothing to wait for.
        box.run("systemctl", "mask", "--now", "systemd-networkd-wait-online.service")
        box.run("systemctl", "daemon-reload")
        yield box
    finally:
        box.close()


def config(job: str, *, stop_drain_timeout: str = "60s", extra: str = "") -> str:
    """maintd.toml: the git material at /srv/repo and a one-job pipeline `build` running ``job``."""
    return f"""\
[daemon]
stop_drain_timeout = "{stop_drain_timeout}"

[agents]
count = 1
cancel_grace = "2s"

[[materials]]
name = "repo"
url = "/srv/repo"
branch = "main"
poll_interval = "1s"

[[pipelines]]
name = "build"
materials = ["repo"]

[[pipelines.stages]]
name = "test"

[[pipelines.stages.jobs]]
name = "unit"
shell = '''{job}'''
{extra}"""
