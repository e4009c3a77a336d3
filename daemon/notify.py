"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET``, if it is set."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("maintd.notify")


def notify(*fields: str) -> bool:
    """Send ``READY=1``, ``STATUS=...`` and the like; False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)
        return False
    return True
