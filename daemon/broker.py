"""The remote agents' broker URL: with its password for Celery and redis-py, masked for people."""

from __future__ import annotations

import os
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["broker_url", "masked", "read_password"]


def broker_url(url: str, password: str | None) -> str:
    """``url`` with ``password`` in it (what Celery and redis-py are given; never logged)."""
    if not password:
        return url
    parts = urlsplit(url)
    netloc = f":{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def masked(url: str) -> str:
    """``url`` as it may be shown: any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def read_password(path: str | None) -> str | None:
    """The broker's password: the file's first line, else MAINTD_BROKER_PASSWORD, else None."""
    if path:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n") or None
    return os.environ.get("MAINTD_BROKER_PASSWORD") or None
