"""daemon.fds without a daemon: the HTTP cap's arithmetic, the accept-error log's rate, and the
capped accept loop over real loopback sockets."""

from __future__ import annotations

import errno
import logging
import socket
from functools import partial

import pytest
import trio
import trio.testing

from daemon import fds


@pytest.mark.parametrize(
    ("limit", "cap"),
    [(65536, fds.HTTP_MAX_CONNECTIONS), (1024, 1024 - fds.FD_RESERVE), (256, 64), (128, 32), (3, 1)],
)
def test_the_http_cap_leaves_a_reserve_under_any_limit(limit: int, cap: int) -> None:
    assert fds.http_connection_cap(limit) == cap
    assert limit - cap >= min(fds.FD_RESERVE, limit * 3 // 4)


def test_accept_errors_are_logged_at_once_then_once_a_minute_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    errors = fds.AcceptErrors("control socket", clock=lambda: now[0])
    emfile = OSError(errno.EMFILE, "Too many open files")
    with caplog.at_level(logging.ERROR, logger="maintd"):
        for _ in range(600):  # a minute of failures every 100 ms
            errors.note(emfile)
            now[0] += 0.1
        errors.note(emfile)  # 60 s after the first line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("control socket: cannot accept a connection: EMFILE (Too many open files)")
    assert "control socket: cannot accept a connection: EMFILE, 600 time(s) in the last 60s" in lines[1]
    assert errors.total == 601
    assert all(r.exc_info is None for r in caplog.records)


async def test_a_capped_listener_accepts_no_more_than_its_limit_until_one_closes() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    served: list[trio.SocketStream] = []
    release = trio.Event()
    changed = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal changed
        served.append(stream)
        changed.set()
        await release.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(fds.serve_listener, listener, handler, what="t", limit=2))
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # in the backlog at least
        with trio.fail_after(5):
            while len(served) < 2:
                await changed.wait()
                changed = trio.Event()
        # The third is in the kernel's backlog (its connect returned): once every task is
        # blocked, the loop has not taken it.
        await trio.testing.wait_all_tasks_blocked()
        assert len(served) == 2
        release.set()
        with trio.fail_after(5):
            while len(served) < 3:
                await changed.wait()
                changed = trio.Event()
        nursery.cancel_scope.cancel()
    for c in clients:
        c.close()
