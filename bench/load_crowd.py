"""Load generators "crowd" (W-1 watchers, the ping clients) and "sampler" (the status sampler),
for bench/load.py.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from _common import IO_TIMEOUT, pct
from load_loop import PROBE_RE, SEQ_RE, Conn, Loop, Lost, now_ns, raise_nofile, usage_now

WATCH_BATCH = 50  # watchers subscribing at once (each gets the whole status as its reply)
PING_RATE = 200.0  # pings per second over all ping clients


class WatchState:
    __slots__ = ("gaps", "sent_at", "seq", "snapshot_at", "snapshot_size")

    def __init__(self) -> None:
        self.snapshot_at = 0
        self.snapshot_size = 0
        self.seq = 0
        self.gaps = 0
        self.sent_at = 0


def crowd_main(path: str) -> int:
    raise_nofile()
    loop = Loop(path)
    watchers: list[Conn] = []
    pingers: list[Conn] = []
    ping_sent: dict[int, int] = {}
    ping_lat: list[int] = []
    ping_errors = [0]
    arrivals: dict[str, list[int]] = {}
    status: dict[str, Any] = {
        "conn": None,
        "sent": 0,
        "next": 0.0,
        "phase": None,
        "samples": {},
        "sizes": [],
        "errors": 0,
        "interval": 0.1,
    }
    bg = {"on": False, "t0": 0.0, "pings": 0, "rr": 0}
    unexpected = [0]

    def on_watch_line(conn: Conn, line: bytes, t: int) -> None:
        w: WatchState = conn.state
        m = SEQ_RE.match(line)
        if m is None:
            unexpected[0] += 1
            return
        seq = int(m[1])
        if w.seq and seq != w.seq + 1:
            w.gaps += 1
        w.seq = seq
        head = line[:1500]
        if b'"event":"state_changed"' in head:
            ev = json.loads(line)
            message = ev.get("message") or ""
            if message.endswith("turned on maintenance mode"):
                arrivals.setdefault("enable:" + ev["maintenance"]["drain_id"], []).append(t)
            elif message.endswith("turned off maintenance mode"):
                arrivals.setdefault(f"disable:{ev['maintenance']['updated_on']}", []).append(t)
        elif b'"event":"in_flight_changed"' in head and b'"subsystem":"ext-' in head:
            p = PROBE_RE.search(line)
            if p is not None:
                arrivals.setdefault("probe:" + p[1].decode(), []).append(t)

    def on_watch_big(conn: Conn, head: bytes, size: int, t: int) -> None:
        w: WatchState = conn.state
        if not head.startswith(b'{"id":1,"ok":true'):
            unexpected[0] += 1
        w.snapshot_at = t
        w.snapshot_size = size

    def on_ping_line(conn: Conn, line: bytes, t: int) -> None:
        sent = ping_sent.pop(conn.fd, None)
        if sent is None or b'"ok":true' not in line:
            ping_errors[0] += 1
            return
        if bg["on"]:
            ping_lat.append(t - sent)

    def on_status_big(conn: Conn, head: bytes, size: int, t: int) -> None:
        if not head.startswith(b'{"id":') or b'"ok":true,"result":{"maintenance"' not in head[:60]:
            status["errors"] += 1
        phase = status["phase"]
        if phase is not None:
            status["samples"].setdefault(phase, []).append(t - status["sent"])
            status["sizes"].append(size)
        status["sent"] = 0

    def on_status_line(conn: Conn, line: bytes, t: int) -> None:
        status["errors"] += 1

    def tick() -> float:
        if not bg["on"]:
            return 0.05
        now = time.monotonic()
        # Pings: PING_RATE a second over all ping clients, round robin, one at a time each.
        due = int((now - bg["t0"]) * PING_RATE) - bg["pings"]
        n = len(pingers)
        for _ in range(min(due, n)):
            conn = pingers[bg["rr"] % n]
            bg["rr"] += 1
            bg["pings"] += 1
            if conn.fd in ping_sent or conn.closed:
                continue
            ping_sent[conn.fd] = now_ns()
            loop.send(conn, b'{"id":2,"type":"ping"}\n')
        sc = status["conn"]
        if sc is not None and not status["sent"] and now >= status["next"] and not sc.closed:
            status["next"] = now + status["interval"]
            sc.skip = True
            status["sent"] = now_ns()
            loop.send(sc, b'{"id":3,"type":"status"}\n')
        return 0.005

    def setup(cmd: dict) -> dict:
        t0 = now_ns()
        for _ in range(cmd["pingers"]):
            pingers.append(loop.connect("ping", on_ping_line))
        if cmd.get("sampler"):
            sc = loop.connect("status", on_status_line)
            sc.on_big = on_status_big
            status["conn"] = sc
        t_conn = now_ns()
        batches = []
        left = cmd["watchers"]
        while left > 0:
            batch = []
            tb = now_ns()
            for _ in range(min(WATCH_BATCH, left)):
                conn = loop.connect("watcher", on_watch_line)
                conn.state = WatchState()
                conn.on_big = on_watch_big
                conn.skip = True
                conn.state.sent_at = now_ns()
                loop.send(conn, b'{"id":1,"type":"watch"}\n')
                batch.append(conn)
            loop.run_until(
                lambda b=batch: all(c.state.snapshot_at or c.closed for c in b), "a batch of watch snapshots", tick=tick
            )
            closed = [c.closed for c in batch if c.closed]
            if closed:
                raise Lost(f"{len(closed)} watcher(s) lost while subscribing: {closed[0]}")
            batches.append((now_ns() - tb) / 1e6)
            watchers.extend(batch)
            left -= len(batch)
        snap = sorted((c.state.snapshot_at - c.state.sent_at) / 1e6 for c in watchers)
        return {
            "connect_ms": (t_conn - t0) / 1e6,
            "watch_s": (now_ns() - t_conn) / 1e9,
            "snapshot_p50_ms": pct(snap, 0.5),
            "snapshot_max_ms": snap[-1] if snap else float("nan"),
            "snapshot_size": watchers[0].state.snapshot_size if watchers else 0,
            "batch_ms": batches,
            "connections": len(loop.conns),
        }

    def start_bg(cmd: dict) -> dict:
        status["interval"] = cmd["status_interval"]
        bg["on"] = True
        bg["t0"] = time.monotonic()
        bg["pings"] = 0
        status["phase"] = cmd["phase"]
        return {}

    def phase(cmd: dict) -> dict:
        status["phase"] = cmd["phase"]
        if cmd.get("seconds"):
            _serve_for(loop, cmd["seconds"], tick)
        return {}

    def sync(cmd: dict) -> dict:
        target = cmd["seq"]
        t0 = now_ns()
        try:
            loop.run_until(
                lambda: all(c.state.seq >= target or c.closed for c in watchers), f"every watcher at seq {target}", tick=tick
            )
        except Lost:
            behind = sum(1 for c in watchers if c.state.seq < target and not c.closed)
            raise Lost(f"{behind} watcher(s) never got event {target}") from None
        return {"waited_ms": (now_ns() - t0) / 1e6, "closed": sum(1 for c in watchers if c.closed)}

    def stop(cmd: dict) -> dict:
        bg["on"] = False
        status["phase"] = None
        # The last requests in flight: wait for their replies (bounded).
        with contextlib.suppress(Lost):
            loop.run_until(lambda: not ping_sent and not status["sent"], "the last replies", timeout=IO_TIMEOUT, tick=tick)
        ping_lat.sort()
        samples = {k: [x / 1e6 for x in v] for k, v in status["samples"].items()}
        return {
            "arrivals": arrivals,
            "status_ms": samples,
            "status_sizes": [min(status["sizes"], default=0), max(status["sizes"], default=0)],
            "status_errors": status["errors"],
            "pings": len(ping_lat),
            "ping_p50_ms": pct(ping_lat, 0.5) / 1e6,
            "ping_p99_ms": pct(ping_lat, 0.99) / 1e6,
            "ping_errors": ping_errors[0],
            "gaps": sum(c.state.gaps for c in watchers),
            "watchers_with_gaps": sum(1 for c in watchers if c.state.gaps),
            "watchers_closed": sum(1 for c in watchers if c.closed),
            "unexpected_lines": unexpected[0],
            "usage": usage_now(),
            "connections": len(loop.conns),
        }

    return loop.serve({"setup": setup, "start_bg": start_bg, "phase": phase, "sync": sync, "stop": stop}, tick=tick)


def _serve_for(loop: Loop, seconds: float, tick: Callable[[], float]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        loop.poll(min(tick(), max(0.0, end - time.monotonic())))
