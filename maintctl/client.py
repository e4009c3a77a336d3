"""A small blocking client for the control socket (no trio: maintctl must start fast)."""

from __future__ import annotations

import itertools
import socket
import time
from typing import Any

import msgspec


class DaemonError(Exception):
    """The daemon answered with an error: ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Unreachable(Exception):
    """The daemon cannot be reached or went away."""


class Client:
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except FileNotFoundError:
            raise Unreachable(
                f"maintd is not running: no socket at {path} (start maintd, or give --socket / MAINTD_SOCKET)"
            ) from None
        except ConnectionRefusedError:
            raise Unreachable(f"maintd is not running: nobody answers on {path}") from None
        except PermissionError:
            raise Unreachable(f"cannot open {path}: permission denied (the socket is for root and the admin group)") from None
        except OSError as exc:
            raise Unreachable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        self.buffer = b""
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, type_: str, **fields: Any) -> int:
        request_id = next(self.ids)
        line = msgspec.json.encode({"id": request_id, "type": type_, **{k: v for k, v in fields.items() if v is not None}})
        try:
            self.sock.sendall(line + b"\n")
        except OSError as exc:
            raise Unreachable(f"lost the connection to maintd: {exc.strerror or exc}") from None
        return request_id

    def read(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next line from the daemon, or None when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (end := self.buffer.find(b"\n")) < 0:
            self.sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 0.001))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:
                raise Unreachable(f"lost the connection to maintd: {exc.strerror or exc}") from None
            if not data:
                raise Unreachable("maintd closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
        return msgspec.json.decode(line)

    def request(self, type_: str, **fields: Any) -> Any:
        """Send one request and return its result; events that arrive meanwhile are kept."""
        request_id = self.send(type_, **fields)
        deadline = time.monotonic() + 60.0
        while True:
            message = self.read(deadline - time.monotonic())
            if message is None:
                raise Unreachable(f"maintd did not answer {type_} in time")
            if message.get("type") == "event":
                self.events.append(message)
                continue
            if message.get("id") != request_id:
                continue
            if message.get("ok"):
                return message.get("result")
            error = message.get("error") or {}
            raise DaemonError(error.get("code", "unknown"), error.get("message", "no message"))
