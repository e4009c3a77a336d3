"""Where the socket and the state live when nobody says.

Under systemd, ``RUNTIME_DIRECTORY`` and ``STATE_DIRECTORY`` (set by the unit's
``RuntimeDirectory=``/``StateDirectory=``) win. Otherwise root gets ``/run/maintd`` and
``/var/lib/maintd``; any other user gets ``$XDG_RUNTIME_DIR/maintd`` (or
``/tmp/maintd-UID``) and ``$XDG_STATE_HOME/maintd`` (or ``~/.local/state/maintd``).
Imports only the standard library: maintctl uses it.
"""

from __future__ import annotations

import os
import pwd
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


#: Where the system service's socket is (maintd.socket's ListenStream=).
SYSTEM_SOCKET = Path("/run/maintd") / SOCKET_NAME


def default_socket() -> Path:
    """The socket maintctl talks to: ``MAINTD_SOCKET`` if set, else the runtime default.

    A user other than root whose own default socket does not exist talks to the system
    service's socket if there is one: members of the ``maintd`` group run ``maintctl``
    as themselves, not as root (maintctl still checks who serves it).
    """
    if s := os.environ.get("MAINTD_SOCKET"):
        return Path(s)
    own = runtime_dir() / SOCKET_NAME
    if os.geteuid() != 0 and not os.path.lexists(own) and os.path.lexists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    return own


def describe_uid(uid: int) -> str:
    """``alice (uid 1000)``, or ``uid 1000`` for a uid with no name: for messages about who
    owns a socket folder or serves a socket (the daemon's and maintctl's)."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
