"""A start that fails says why in one line, and nothing else: no warnings meant for a running
daemon, no "stop stage" lines for a daemon that never served (issue 13)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def start(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "daemon", "--state-dir", str(tmp_path / "state"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("why", ["http-port-in-use", "socket-folder-writable-by-all"])
def test_a_failing_start_prints_one_line(tmp_path: Path, why: str) -> None:
    config = tmp_path / "maintd.toml"
    config.write_text('[control]\nadmin_group = "maintd-no-such-group"\n')  # a warning that must not show
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if why == "http-port-in-use":
            sock, http = tmp_path / "run" / "c.sock", f"127.0.0.1:{taken.getsockname()[1]}"
            expected = "Address already in use"
        else:
            folder = tmp_path / "open"
            folder.mkdir()
            folder.chmod(0o777)
            sock, http = folder / "c.sock", "off"
            expected = "is writable by its group and everyone"
        done = start(tmp_path, "--config", str(config), "--socket", str(sock), "--http", http)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("ERROR maintd: "), done.stderr
