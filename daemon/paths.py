"""Where the socket and the state live when nobody says.

Under systemd, ``RUNTIME_DIRECTORY`` and ``STATE_DIRECTORY`` (set by the unit's
``RuntimeDirectory=``/``StateDirectory=``) win. Otherwise root gets ``/run/maintd`` and
``/var/lib/maintd``; any other user gets ``$XDG_RUNTIME_DIR/maintd`` (or
``/tmp/maintd-UID``) and ``$XDG_STATE_HOME/maintd`` (or ``~/.local/state/maintd``).
Imports only the standard library: maintctl uses it.
"""

from __future__ import annotations

import os
from pathlib import Path

SOCKET_NAME = "control.sock"


def runtime_dir() -> Path:
    if d := os.environ.get("RUNTIME_DIRECTORY"):
        return Path(d.split(":")[0])
    if os.geteuid() == 0:
        return Path("/run/maintd")
    if d := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(d) / "maintd"
    return Path(f"/tmp/maintd-{os.geteuid()}")


def state_dir() -> Path:
    if d := os.environ.get("STATE_DIRECTORY"):
        return Path(d.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/maintd")
    if d := os.environ.get("XDG_STATE_HOME"):
        return Path(d) / "maintd"
    return Path.home() / ".local" / "state" / "maintd"


def default_socket() -> Path:
    """The socket maintctl talks to: ``MAINTD_SOCKET`` if set, else the runtime default."""
    if s := os.environ.get("MAINTD_SOCKET"):
        return Path(s)
    return runtime_dir() / SOCKET_NAME
