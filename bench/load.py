"""Load benchmark: one real daemon with many connections, watchers, subsystems and jobs.

Not a test: it builds a load, measures and prints, next to the targets. One run does:

0. The load, against one daemon (``python -m daemon --http off``) started in a temporary
   directory with a raised RLIMIT_NOFILE: a pipeline with one stage of J jobs (default
   10,000) and ``[agents] count = 0``, so that all J stay scheduled once triggered (the run
   checks that the config is accepted and that J jobs are scheduled); then C control
   connections (default 1,000) at once: S registered external subsystems (default 100)
   that each report I in-flight items (default 100, ``building_job``, cancellable, so they
   block a restart and stay ``paused`` in every drain), W ``watch`` connections (default
   500), one admin connection, one status sampler and the rest ``ping`` clients (about
   200 pings/s in all). The connections are driven by three load-generator processes of
   their own (plain epoll, no trio), so the daemon shares no GIL with them: "subsystems"
   (the S subsystems, the admin connection and one watcher, the observer), "crowd" (the
   other W-1 watchers and the ping clients) and "sampler" (the status sampler alone: a
   multi-megabyte reply crosses a socket buffer of about 200 KB many times, and a reader
   busy with 499 watchers would time its own gaps between reads). All times are
   ``time.monotonic_ns()`` (CLOCK_MONOTONIC, the same clock in every process).
1. Enable to all IntakePaused: N cycles (default 20) of ``enable``, wait until every
   external subsystem has received ``pause_intake`` and answered ``intake_paused`` and the
   daemon shows every subsystem ``paused`` or ``drained``, then ``disable`` and wait until
   every subsystem has received ``resume_intake`` and the daemon shows them running. "The
   daemon shows" is read from the observer's ``watch`` stream (each ``subsystem_state``
   event goes out with the status snapshot that has the change, so a ``status`` at that
   moment shows it), then confirmed by a ``status`` request whose reply is also timed.
   Between cycles the crowd's watchers catch up on every event first (each cycle starts
   with no backlog).
2. ``status`` latency p50/p99 and reply size: the sampler sends ``status`` every 100 ms
   (one request at a time) during the cycles and probes (the cached status is rebuilt
   after each change, so most requests pay the encoding) and during a steady phase with
   no changes (the cached reply: the cost of sending it).
3. Event fan-out to the W watchers: from the moment a request is sent until each watcher
   has the event line: the ``state_changed`` event of each ``enable`` and of each
   ``disable``, and the ``in_flight_changed`` event of P probes (default 20: one
   subsystem reports its items again with one description changed). p50/p99/max across
   all watchers, and the median over requests of the time until the last watcher has it.
   Every watcher also checks that the event ``seq`` numbers it gets have no gap.
4. The daemon's VmRSS and VmHWM (/proc/PID/status) at full load, its threads and CPU.

Every process this script starts is stopped in a ``finally``; the load generators also
stop by themselves when their stdin closes or after a bounded time. Only Unix sockets in a
temporary directory are used.

    /tmp/venv/bin/python bench/load.py              # the full load (about 1-2 minutes)
    /tmp/venv/bin/python bench/load.py --quick      # 200 connections, 1,000 jobs, 5 cycles

Internal roles (used by the script itself): ``load.py _subsystems SOCKET``, ``load.py
_crowd SOCKET`` and ``load.py _sampler SOCKET`` are the load generators; each takes JSON commands on stdin and answers
each with one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common
from _common import IO_TIMEOUT, LineClient, describe_tree, median, pct, source_env, stop_process, verdict

# Targets, printed next to the figures.
TARGET_ENABLE_P99_MS = 50.0
TARGET_STATUS_P99_MS = 100.0
TARGET_RSS_MIB = 250.0

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
START_TIMEOUT = 60.0  # the daemon parses a config of J jobs first
STEP_TIMEOUT = 60.0  # every wait for one step (a cycle, a probe, a sync, a setup batch)
CHILD_MAX_SECONDS = 900.0  # a load generator left behind by a killed parent stops by itself
NOFILE_WANTED = 65536
RECV_SIZE = 1 << 20
HEAD_KEEP = 256 * 1024  # of a big line (a status snapshot), only the head is kept
WATCH_BATCH = 50  # watchers subscribing at once (each gets the whole status as its reply)
PING_RATE = 200.0  # pings per second over all ping clients
STEADY_SECONDS = 3.0
POLL_STATUS_INTERVAL = 0.2

now_ns = time.monotonic_ns
SUBSYSTEMS_RE = re.compile(rb'"name":"([^"]+)","state":"([a-z]+)","in_flight":(\d+)')
PROBE_RE = re.compile(rb"probe-(\d+)\b")
SEQ_RE = re.compile(rb'^\{"type":"event","seq":(\d+)')


def raise_nofile() -> None:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows (in every process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(hard, NOFILE_WANTED)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def nofile() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_subsystems(head: bytes) -> dict[str, tuple[str, int]]:
    """Name -> (state, in_flight) from the head of a status JSON (subsystems come before items)."""
    cut = head.find(b'"running_systems"')
    part = head if cut < 0 else head[:cut]
    return {m[1].decode(): (m[2].decode(), int(m[3])) for m in SUBSYSTEMS_RE.finditer(part)}


# --------------------------------------------------------------------------------------
# The load generators' event loop: epoll, nonblocking sockets, lines in, buffered sends
# --------------------------------------------------------------------------------------


class Lost(Exception):
    pass


class Conn:
    """One connection. ``skip``: the next line is big; keep only its head and its size."""

    __slots__ = ("closed", "fd", "head", "on_big", "on_line", "rbuf", "role", "size", "skip", "sock", "state", "wbuf")

    def __init__(self, sock: socket.socket, role: str, on_line: Callable[..., None]) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.on_line = on_line
        self.on_big: Callable[..., None] | None = None
        self.skip = False
        self.head = bytearray()
        self.size = 0
        self.role = role
        self.closed: str | None = None
        self.state: Any = None


class Loop:
    def __init__(self, path: str) -> None:
        self.path = path
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.cmd_buf = b""
        self.commands: list[dict] = []
        self.stdin_closed = False
        self.lost: list[tuple[str, str]] = []
        self.deadline = time.monotonic() + CHILD_MAX_SECONDS
        os.set_blocking(0, False)
        self.ep.register(0, select.EPOLLIN)

    def connect(self, role: str, on_line: Callable[..., None]) -> Conn:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(IO_TIMEOUT)
        s.connect(self.path)
        s.setblocking(False)
        conn = Conn(s, role, on_line)
        self.conns[conn.fd] = conn
        self.ep.register(conn.fd, select.EPOLLIN)
        return conn

    def send(self, conn: Conn, data: bytes) -> None:
        if conn.closed:
            raise Lost(f"{conn.role}: send on a closed connection ({conn.closed})")
        if conn.wbuf:
            conn.wbuf += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.drop(conn, f"send failed: {exc}")
            return
        if sent < len(data):
            conn.wbuf += data[sent:]
            self.ep.modify(conn.fd, select.EPOLLIN | select.EPOLLOUT)

    def flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.wbuf)
        except BlockingIOError:
            return
        except OSError as exc:
            self.drop(conn, f"send failed: {exc}")
            return
        del conn.wbuf[:sent]
        if not conn.wbuf:
            self.ep.modify(conn.fd, select.EPOLLIN)

    def drop(self, conn: Conn, reason: str) -> None:
        if conn.closed:
            return
        conn.closed = reason
        self.lost.append((conn.role, reason))
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.ep.unregister(conn.fd)
        self.conns.pop(conn.fd, None)
        conn.sock.close()

    def close_all(self) -> None:
        for conn in list(self.conns.values()):
            conn.closed = conn.closed or "closed by us"
            conn.sock.close()
        self.conns.clear()
        self.ep.close()

    def poll(self, timeout: float) -> None:
        if time.monotonic() > self.deadline:
            raise Lost(f"ran for more than {CHILD_MAX_SECONDS:.0f} s")
        for fd, ev in self.ep.poll(timeout):
            if fd == 0:
                self.read_stdin()
                continue
            conn = self.conns.get(fd)
            if conn is None:
                continue
            if ev & select.EPOLLOUT:
                self.flush(conn)
            if ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                try:
                    data = conn.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self.drop(conn, f"recv failed: {exc}")
                    continue
                if not data:
                    self.drop(conn, "the daemon closed the connection")
                    continue
                self.feed(conn, data, now_ns())

    def feed(self, conn: Conn, data: bytes, t: int) -> None:
        pos = 0
        n = len(data)
        while pos < n and not conn.closed:
            end = data.find(b"\n", pos)
            if conn.skip:
                stop = n if end < 0 else end
                room = HEAD_KEEP - len(conn.head)
                if room > 0:
                    conn.head += data[pos : min(stop, pos + room)]
                conn.size += stop - pos
                if end < 0:
                    return
                conn.skip = False
                head, size = bytes(conn.head), conn.size + 1
                conn.head = bytearray()
                conn.size = 0
                pos = end + 1
                assert conn.on_big is not None
                conn.on_big(conn, head, size, t)
                continue
            if end < 0:
                conn.rbuf += data[pos:]
                return
            if conn.rbuf:
                line = bytes(conn.rbuf) + data[pos:end]
                conn.rbuf = bytearray()
            else:
                line = data[pos:end]
            pos = end + 1
            conn.on_line(conn, line, t)

    def read_stdin(self) -> None:
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return
        if not data:
            self.stdin_closed = True
            with contextlib.suppress(OSError, KeyError, ValueError):
                self.ep.unregister(0)
            return
        self.cmd_buf += data
        while b"\n" in self.cmd_buf:
            line, _, self.cmd_buf = self.cmd_buf.partition(b"\n")
            if line.strip():
                self.commands.append(json.loads(line))

    def run_until(
        self, done: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT, tick: Callable[[], float] | None = None
    ) -> None:
        """Poll until ``done()``; ``tick()`` (if any) runs each turn and returns the next poll timeout."""
        deadline = time.monotonic() + timeout
        while not done():
            if self.stdin_closed:
                raise Lost("the parent went away")
            if time.monotonic() > deadline:
                raise Lost(f"timed out after {timeout:.0f} s waiting for {what}")
            wait = tick() if tick is not None else 0.05
            self.poll(wait)

    def serve(self, handlers: dict[str, Callable[[dict], dict]], tick: Callable[[], float] | None = None) -> int:
        """The child's main loop: run the parent's commands one at a time, answer each on stdout."""
        while True:
            while not self.commands:
                if self.stdin_closed:
                    return 0
                if time.monotonic() > self.deadline:
                    return 1
                self.poll(tick() if tick is not None else 0.05)
            cmd = self.commands.pop(0)
            name = cmd.pop("cmd")
            try:
                result = handlers[name](cmd)
                result["ok"] = True
            except Lost as exc:
                result = {"ok": False, "error": str(exc)}
            result["lost"] = self.lost[:20]
            result["lost_count"] = len(self.lost)
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
            if name == "stop":
                self.close_all()
                return 0


def usage_now() -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss}


# --------------------------------------------------------------------------------------
# Load generator "subsystems": S external subsystems, the admin connection, the observer
# --------------------------------------------------------------------------------------


def items_message(name: str, count: int, probe: int | None = None) -> bytes:
    items = []
    for k in range(count):
        desc = f"load item {k} of {name}"
        if k == 0 and probe is not None:
            desc += f" probe-{probe}"
        items.append({"id": f"job-{k:04d}", "kind": "building_job", "description": desc, "cancellable": True})
    return json.dumps({"type": "in_flight", "items": items}, separators=(",", ":")).encode() + b"\n"


class Sub:
    __slots__ = ("ack_at", "conn", "errors", "name", "pause", "pause_at", "registered", "resume", "resume_at")

    def __init__(self, name: str) -> None:
        self.name = name
        self.conn: Conn | None = None
        self.registered = False
        self.pause: str | None = None  # drain_id of the last pause_intake
        self.pause_at = 0
        self.ack_at = 0
        self.resume: str | None = None
        self.resume_at = 0
        self.errors: list[str] = []


def subsystems_main(path: str) -> int:
    raise_nofile()
    loop = Loop(path)
    subs: list[Sub] = []
    by_fd: dict[int, Sub] = {}
    cfg: dict[str, Any] = {}
    admin_replies: dict[int, tuple[int, Any]] = {}
    next_id = [100]
    obs: dict[str, Any] = {
        "states": {},  # subsystem name -> state, from the watch stream
        "drain": None,  # drain_id of the newest enable event seen
        "enable_at": {},  # drain_id -> arrival of its state_changed
        "disable_at": {},  # updated_on -> arrival of its state_changed
        "probe_at": {},  # probe number -> arrival of its in_flight_changed
        "all_paused_at": 0,
        "paused_at": {},  # subsystem name -> when it was first shown paused or drained, this cycle
        "seq": 0,
        "gaps": 0,
        "removed": [],
        "snapshot": None,
    }
    admin: list[Conn] = []
    observer: list[Conn] = []

    def on_sub_line(conn: Conn, line: bytes, t: int) -> None:
        sub = by_fd[conn.fd]
        msg = json.loads(line)
        kind = msg.get("type")
        if kind == "pause_intake":
            sub.pause, sub.pause_at = msg["drain_id"], t
            loop.send(conn, b'{"type":"intake_paused","drain_id":"%s"}\n' % msg["drain_id"].encode())
            sub.ack_at = now_ns()
        elif kind == "resume_intake":
            sub.resume, sub.resume_at = msg["drain_id"], t
        elif kind == "cancel":
            loop.send(
                conn, json.dumps({"type": "cancel_result", "item": msg["item"], "ok": False, "reason": "bench"}).encode() + b"\n"
            )
        elif msg.get("id") == 1:
            if not msg.get("ok"):
                sub.errors.append(f"register refused: {msg.get('error')}")
                return
            sub.registered = True
            loop.send(conn, items_message(sub.name, cfg["items"]))
        elif msg.get("ok") is False:
            sub.errors.append(str(msg.get("error")))

    def on_admin_line(conn: Conn, line: bytes, t: int) -> None:
        msg = json.loads(line)
        admin_replies[msg.get("id")] = (t, msg)

    def on_admin_big(conn: Conn, head: bytes, size: int, t: int) -> None:
        rid = re.match(rb'\{"id":(\d+)', head)
        admin_replies[int(rid[1]) if rid else -1] = (t, {"head": head, "size": size})

    def admin_request(type_: str, big: bool = False, **fields: Any) -> tuple[int, int]:
        next_id[0] += 1
        rid = next_id[0]
        conn = admin[0]
        if big:
            conn.skip = True
        t = now_ns()
        loop.send(conn, json.dumps({"id": rid, "type": type_, **fields}).encode() + b"\n")
        return rid, t

    def admin_wait(rid: int, what: str) -> tuple[int, Any]:
        loop.run_until(lambda: rid in admin_replies or admin[0].closed is not None, what)
        if rid not in admin_replies:
            raise Lost(f"admin connection lost: {admin[0].closed}")
        return admin_replies.pop(rid)

    def status_states() -> tuple[int, int, dict[str, tuple[str, int]]]:
        rid, t0 = admin_request("status", big=True)
        t1, reply = admin_wait(rid, "a status reply")
        return t1 - t0, reply["size"], parse_subsystems(reply["head"])

    def all_paused() -> bool:
        states = obs["states"]
        return bool(states) and all(s in ("paused", "drained") for s in states.values())

    def on_observer_line(conn: Conn, line: bytes, t: int) -> None:
        m = SEQ_RE.match(line)
        if m is None:
            return
        seq = int(m[1])
        if obs["seq"] and seq != obs["seq"] + 1:
            obs["gaps"] += 1
        obs["seq"] = seq
        head = line[:1500]
        states = obs["states"]
        if b'"event":"state_changed"' in head or b'"event":"subsystem_state"' in head:
            ev = json.loads(line)
            info = ev["maintenance"]
            message = ev.get("message") or ""
            if ev["event"] == "state_changed":
                if message.endswith("turned on maintenance mode"):
                    obs["drain"] = info["drain_id"]
                    obs["enable_at"][info["drain_id"]] = t
                    for name in states:
                        states[name] = "pausing"
                elif message.endswith("turned off maintenance mode"):
                    obs["disable_at"][info["updated_on"]] = t
                    for name in states:
                        states[name] = "running"
            else:
                name = ev.get("subsystem")
                if name in states:
                    if message.endswith(" stopped its intake") and states[name] != "drained":
                        states[name] = "paused"
                        obs["paused_at"].setdefault(name, t)
                    elif message.endswith(" is drained"):
                        states[name] = "drained"
                        obs["paused_at"].setdefault(name, t)
                    elif " failed: " in message:
                        states[name] = "failed"
            if obs["drain"] is not None and not obs["all_paused_at"] and all_paused():
                obs["all_paused_at"] = t
        elif b'"event":"in_flight_changed"' in head and b'"subsystem":"ext-' in head:
            p = PROBE_RE.search(line)
            if p is not None:
                obs["probe_at"][int(p[1])] = t
        elif b'"event":"subsystem_removed"' in head:
            obs["removed"].append(line[:300].decode(errors="replace"))

    def on_observer_big(conn: Conn, head: bytes, size: int, t: int) -> None:
        obs["snapshot"] = (t, head, size)

    def setup(cmd: dict) -> dict:
        cfg.update(cmd)
        t0 = now_ns()
        admin.append(loop.connect("admin", on_admin_line))
        admin[0].on_big = on_admin_big
        for i in range(cmd["subsystems"]):
            sub = Sub(f"ext-{i:03d}")
            sub.conn = loop.connect("subsystem", on_sub_line)
            by_fd[sub.conn.fd] = sub
            subs.append(sub)
            loop.send(sub.conn, json.dumps({"id": 1, "type": "register", "name": sub.name}).encode() + b"\n")
        loop.run_until(lambda: all(s.registered or s.errors for s in subs), "every subsystem's register reply")
        errors = [f"{s.name}: {e}" for s in subs for e in s.errors]
        if errors:
            raise Lost(f"{len(errors)} subsystem error(s), first: {errors[0]}")
        t_registered = now_ns()
        # Until the daemon shows every subsystem with all its items (status every 100 ms).
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            _, size, states = status_states()
            ext = {n: v for n, v in states.items() if n.startswith("ext-")}
            if len(ext) == len(subs) and all(v == ("running", cmd["items"]) for v in ext.values()):
                break
            if time.monotonic() > deadline:
                raise Lost(f"the daemon does not show {len(subs)} subsystems with {cmd['items']} items each")
            _pause(loop, 0.1)
        t_reported = now_ns()
        # The observer: one of the watchers, in this process, to know when all are paused.
        conn = loop.connect("observer", on_observer_line)
        conn.on_big = on_observer_big
        conn.skip = True
        observer.append(conn)
        t_watch = now_ns()
        loop.send(conn, b'{"id":1,"type":"watch"}\n')
        loop.run_until(lambda: obs["snapshot"] is not None or conn.closed is not None, "the observer's snapshot")
        if obs["snapshot"] is None:
            raise Lost(f"observer lost: {conn.closed}")
        t_snap, head, snap_size = obs["snapshot"]
        obs["states"] = {n: v[0] for n, v in parse_subsystems(head).items()}
        return {
            "register_s": (t_registered - t0) / 1e9,
            "reported_s": (t_reported - t0) / 1e9,
            "status_size": size,
            "snapshot_size": snap_size,
            "snapshot_ms": (t_snap - t_watch) / 1e6,
            "subsystems_shown": len(obs["states"]),
            "connections": len(loop.conns),
        }

    def cycle(cmd: dict) -> dict:
        seq0 = obs["seq"]
        obs["all_paused_at"] = 0
        obs["paused_at"] = {}
        obs["drain"] = None
        rid, t0 = admin_request("enable", reason=f"bench: load cycle {cmd['i']}")
        t_reply, reply = admin_wait(rid, "the enable reply")
        if not reply.get("ok"):
            raise Lost(f"enable refused: {reply.get('error')}")
        drain = reply["result"]["drain_id"]
        loop.run_until(
            lambda: all(s.pause == drain and s.ack_at for s in subs) and obs["drain"] == drain and obs["all_paused_at"] > 0,
            "every subsystem paused",
        )
        t_all = obs["all_paused_at"]
        order = sorted(obs["paused_at"].items(), key=lambda kv: kv[1])
        builtin = {n: (t - t0) / 1e6 for n, t in order if not n.startswith("ext-")}
        ext = [(t - t0) / 1e6 for n, t in order if n.startswith("ext-")]
        last_pause = max(s.pause_at for s in subs) if subs else t0
        last_ack = max(s.ack_at for s in subs) if subs else t0
        # Confirmed by a status reply (it must show the same).
        status_ms, _, states = status_states()
        bad = {n: v[0] for n, v in states.items() if v[0] not in ("paused", "drained")}
        t_confirm = now_ns()
        confirm_tries = 1
        while bad:
            if confirm_tries > 50:
                raise Lost(f"status does not show every subsystem paused: {sorted(bad.items())[:5]}")
            _pause(loop, 0.01)
            status_ms, _, states = status_states()
            bad = {n: v[0] for n, v in states.items() if v[0] not in ("paused", "drained")}
            t_confirm = now_ns()
            confirm_tries += 1
        # Disable, and wait until every subsystem runs again.
        rid, t2 = admin_request("disable", reason="bench: load cycle done")
        t_dreply, dreply = admin_wait(rid, "the disable reply")
        if not dreply.get("ok"):
            raise Lost(f"disable refused: {dreply.get('error')}")
        updated_on = dreply["result"]["updated_on"]
        loop.run_until(
            lambda: all(s.resume == drain for s in subs) and updated_on in obs["disable_at"], "every subsystem resumed"
        )
        t_resumed = max([obs["disable_at"][updated_on], *(s.resume_at for s in subs)])
        ms = lambda t: (t - t0) / 1e6  # noqa: E731
        return {
            "drain_id": drain,
            "t_enable": t0,
            "t_disable": t2,
            "updated_on": updated_on,
            "enable_reply_ms": ms(t_reply),
            "all_pause_received_ms": ms(last_pause),
            "all_acked_ms": ms(last_ack),
            "all_paused_ms": (max(t_all, last_ack) - t0) / 1e6,
            "status_confirmed_ms": ms(t_confirm),
            "confirm_status_ms": status_ms / 1e6,
            "confirm_tries": confirm_tries,
            "disable_reply_ms": (t_dreply - t2) / 1e6,
            "all_resumed_ms": (t_resumed - t2) / 1e6,
            "last_shown": order[-1][0] if order else None,
            "builtin_shown_ms": builtin,
            "ext_shown_ms": [ext[0], ext[len(ext) // 2], ext[-1]] if ext else [],
            "observer_enable_at": obs["enable_at"][drain],
            "observer_disable_at": obs["disable_at"][updated_on],
            "events": obs["seq"] - seq0,
            "last_seq": obs["seq"],
        }

    def probe(cmd: dict) -> dict:
        i = cmd["i"]
        sub = subs[i % len(subs)]
        data = items_message(sub.name, cfg["items"], probe=i)
        t0 = now_ns()
        loop.send(sub.conn, data)
        loop.run_until(lambda: i in obs["probe_at"], f"the observer's in_flight_changed of probe {i}")
        return {"t_sent": t0, "observer_at": obs["probe_at"][i], "last_seq": obs["seq"], "line_bytes": len(data)}

    def stop(cmd: dict) -> dict:
        return {"usage": usage_now(), "gaps": obs["gaps"], "removed": obs["removed"][:5], "connections": len(loop.conns)}

    return loop.serve({"setup": setup, "cycle": cycle, "probe": probe, "stop": stop})


def _pause(loop: Loop, seconds: float) -> None:
    """Keep serving the sockets for ``seconds``."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        loop.poll(left)


# --------------------------------------------------------------------------------------
# Load generators "crowd" (W-1 watchers, the ping clients) and "sampler" (the status sampler)
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# The daemon and the load generators, from the main process
# --------------------------------------------------------------------------------------


def write_config(path: Path, jobs: int) -> None:
    lines = [
        "[daemon]",
        'log_level = "warning"',
        "[agents]",
        "count = 0",  # nothing runs: the J jobs stay scheduled
        "",
        "[[pipelines]]",
        'name = "bulk"',
        "[[pipelines.stages]]",
        'name = "all"',
    ]
    width = max(5, len(str(jobs)))
    for i in range(1, jobs + 1):
        lines += ["[[pipelines.stages.jobs]]", f'name = "j{i:0{width}d}"', 'command = ["true"]']
    path.write_text("\n".join(lines) + "\n")


class Daemon(_common.Daemon):
    """The daemon with a raised RLIMIT_NOFILE, and the highest VmRSS seen by proc_status."""

    def __init__(self, tmp: Path, config: Path, env: dict) -> None:
        super().__init__(tmp, config, env, preexec_fn=raise_nofile)
        self.max_rss_kb = 0

    def proc_status(self) -> dict[str, int]:
        out = super().proc_status()
        self.max_rss_kb = max(self.max_rss_kb, out.get("VmRSS", 0))
        return out

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def limits_nofile(self) -> str:
        with open(f"/proc/{self.proc.pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return line.split()[3]
        return "?"


class Child:
    """A load generator: JSON commands on its stdin, one JSON answer line each on its stdout."""

    def __init__(self, role: str, sock: str, tmp: Path, env: dict) -> None:
        self.role = role
        self.err_path = tmp / f"{role}.err"
        self.proc: subprocess.Popen | None = None
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE), f"_{role}", sock],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                preexec_fn=raise_nofile,
            )
        self.buf = b""

    def call(self, cmd: str, timeout: float = STEP_TIMEOUT + 30, **fields: Any) -> dict:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{self.role}: no answer to {cmd} within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                data = os.read(fd, 1 << 20)
                if not data:
                    raise RuntimeError(f"{self.role} exited ({self.proc.wait()}) during {cmd}:\n{self.err_tail()}")
                self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        result = json.loads(line)
        if not result.get("ok"):
            raise RuntimeError(f"{self.role}: {cmd} failed: {result.get('error')} (lost connections: {result.get('lost')})")
        return result

    def err_tail(self) -> str:
        try:
            return self.err_path.read_bytes()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        stop_process(proc, terminate=False)  # it stops once its stdin is closed
        if proc.stdout is not None:
            proc.stdout.close()


def wait_scheduled(d: Daemon, c: LineClient, jobs: int) -> tuple[float, int]:
    """Poll status until the scheduler shows ``jobs`` items; (seconds, status size)."""
    t0 = time.monotonic()
    while True:
        d.check_alive()
        status = c.request("status")
        sched = [s for s in status["subsystems"] if s["name"] == "scheduler"]
        if sched and sched[0]["in_flight"] >= jobs and len(status["running_systems"]["scheduled_jobs"]) >= jobs:
            return time.monotonic() - t0, len(json.dumps(status, separators=(",", ":")))
        if time.monotonic() - t0 > STEP_TIMEOUT:
            raise RuntimeError(f"{jobs} jobs were not scheduled within {STEP_TIMEOUT:.0f} s")
        time.sleep(POLL_STATUS_INTERVAL)


def run_all(tmp: Path, args: argparse.Namespace, env: dict) -> dict:
    config = tmp / "maintd.toml"
    write_config(config, args.jobs)
    res: dict[str, Any] = {"cycles": [], "probes": [], "syncs": [], "rss": {}}
    d = Daemon(tmp, config, env)
    children: list[Child] = []
    ok = False
    t_start = time.monotonic()
    try:
        d.wait_ready(START_TIMEOUT)
        res["start_s"] = time.monotonic() - t_start
        res["daemon_nofile"] = d.limits_nofile()
        c = LineClient(d.sock)
        try:
            agents = c.request("agents")
            res["agents"] = agents
            trig = c.request("trigger", pipeline="bulk")
            res["trigger"] = trig
            res["scheduled_s"], res["status_size_jobs_only"] = wait_scheduled(d, c, args.jobs)
        finally:
            c.close()
        res["rss"]["jobs scheduled"] = d.proc_status()

        subs = Child("subsystems", d.sock, tmp, env)
        children.append(subs)
        crowd = Child("crowd", d.sock, tmp, env)
        children.append(crowd)
        # The status sampler has a process of its own: a 5 MB reply comes through a socket
        # buffer of about 200 KB, so a reader that is also busy with 499 watchers would
        # measure its own delays between reads, not the daemon's answer.
        sampler = Child("sampler", d.sock, tmp, env)
        children.append(sampler)
        pingers = args.connections - args.watchers - args.subsystems - 2
        t0 = time.monotonic()
        res["subs_setup"] = subs.call("setup", subsystems=args.subsystems, items=args.items)
        res["crowd_setup"] = crowd.call("setup", watchers=args.watchers - 1, pingers=pingers, timeout=600)
        sampler.call("setup", watchers=0, pingers=0, sampler=True)
        res["setup_s"] = time.monotonic() - t0
        d.check_alive()
        res["connections"] = res["subs_setup"]["connections"] + res["crowd_setup"]["connections"] + 1
        res["pingers"] = pingers
        res["rss"]["all connected"] = d.proc_status()
        cpu0 = d.cpu_seconds()

        sampler.call("start_bg", phase="steady", status_interval=args.status_interval)
        crowd.call("start_bg", phase="steady", status_interval=args.status_interval)
        crowd.call("phase", phase="steady", seconds=STEADY_SECONDS, timeout=STEADY_SECONDS + 30)
        res["rss"]["steady"] = d.proc_status()
        crowd.call("phase", phase="cycles")
        sampler.call("phase", phase="cycles")
        t_cycles = time.monotonic()
        for i in range(args.cycles):
            r = subs.call("cycle", i=i)
            res["cycles"].append(r)
            res["syncs"].append(crowd.call("sync", seq=r["last_seq"]))
            d.check_alive()
            d.proc_status()
        res["cycles_s"] = time.monotonic() - t_cycles
        res["rss"]["after cycles"] = d.proc_status()
        for i in range(args.probes):
            r = subs.call("probe", i=i)
            res["probes"].append(r)
            res["syncs"].append(crowd.call("sync", seq=r["last_seq"]))
            d.check_alive()
        res["daemon_cpu_s"] = d.cpu_seconds() - cpu0
        res["crowd"] = crowd.call("stop")
        sampled = sampler.call("stop")
        for key in ("status_ms", "status_sizes", "status_errors"):
            res["crowd"][key] = sampled[key]
        res["subs"] = subs.call("stop")
        d.check_alive()
        res["rss"]["end"] = d.proc_status()
        res["max_rss_kb"] = d.max_rss_kb
        res["pid"] = d.proc.pid
        res["run_s"] = time.monotonic() - t_start
        ok = True
    finally:
        try:
            for child in children:
                child.stop()
            if not ok:
                for child in children:
                    tail = child.err_tail()
                    if tail.strip():
                        print(f"--- {child.role} stderr (tail) ---\n{tail}\n---", file=sys.stderr)
                tail = d.log_text()[-3000:]
                if tail.strip():
                    print(f"--- maintd log (tail) ---\n{tail}\n---", file=sys.stderr)
        finally:
            d.stop()
            res["log"] = d.log_text()
            res["exit_code"] = d.proc.returncode if d.proc else None
    return res


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def fanout(sent: dict[str, int], extra: dict[str, int], arrivals: dict[str, list[int]], watchers: int) -> dict:
    """Latency (ms) from each request to each watcher's event line; the last watcher per request."""
    all_ms: list[float] = []
    last_ms: list[float] = []
    missing = 0
    for key, t0 in sent.items():
        times = list(arrivals.get(key, []))
        if key in extra:
            times.append(extra[key])
        missing += watchers - len(times)
        lat = [(t - t0) / 1e6 for t in times]
        all_ms += lat
        if lat:
            last_ms.append(max(lat))
    all_ms.sort()
    return {
        "n": len(all_ms),
        "requests": len(sent),
        "p50": pct(all_ms, 0.5),
        "p99": pct(all_ms, 0.99),
        "max": all_ms[-1] if all_ms else float("nan"),
        "last_median": median(last_ms),
        "missing": missing,
    }


def report(args: argparse.Namespace, source: Path, res: dict, total: float) -> None:
    import msgspec
    import trio

    w = print
    mib = lambda kb: kb / 1024  # noqa: E731
    w(
        f"maintd load benchmark  (python {sys.version.split()[0]}, trio {trio.__version__}, msgspec {msgspec.__version__}, "
        f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f})"
    )
    w(f"tree: {describe_tree(source)}")
    w("")
    ss, cs = res["subs_setup"], res["crowd_setup"]
    n_agents = len(res["agents"]["agents"]) if isinstance(res["agents"], dict) and "agents" in res["agents"] else res["agents"]
    w(f"0. the load on one daemon (--http off; RLIMIT_NOFILE soft {res['daemon_nofile']} in the daemon):")
    w(
        f"  [agents] count = 0 accepted (the daemon shows {n_agents} agents); pipeline bulk/{res['trigger']['counter']} "
        f"with {args.jobs:,} jobs, all scheduled {res['scheduled_s'] * 1000:.0f} ms after the trigger reply; "
        f"daemon up in {res['start_s']:.1f} s"
    )
    w(
        f"  {res['connections']:,} control connections open at once: {args.watchers} watch (1 observer + {args.watchers - 1} "
        f"in the crowd), {args.subsystems} registered subsystems x {args.items} building_job items, "
        f"{res['pingers']} ping clients (~{PING_RATE:.0f}/s in all), 1 status sampler, 1 admin"
    )
    w(
        f"  setup: {args.subsystems} subsystems registered in {ss['register_s'] * 1000:.0f} ms, shown with all items after "
        f"{ss['reported_s'] * 1000:.0f} ms; {args.watchers - 1} watch snapshots of {cs['snapshot_size']:,} bytes each "
        f"in {cs['watch_s']:.1f} s (batches of {WATCH_BATCH}; snapshot p50 {cs['snapshot_p50_ms']:.0f} ms, max "
        f"{cs['snapshot_max_ms']:.0f} ms)"
    )
    w("")

    cyc = res["cycles"]
    keys = [
        ("enable reply", "enable_reply_ms"),
        ("every subsystem got pause_intake", "all_pause_received_ms"),
        ("every subsystem answered intake_paused", "all_acked_ms"),
        ("all paused/drained (watch stream)  [target]", "all_paused_ms"),
        ("... and confirmed by a status reply", "status_confirmed_ms"),
        ("disable -> reply", "disable_reply_ms"),
        ("disable -> all resumed", "all_resumed_ms"),
    ]
    w(f"1. enable -> every subsystem IntakePaused, {len(cyc)} enable/disable cycles, ms from the enable request:")
    w(f"  {'':46}{'p50':>9}{'p99':>9}{'max':>9}")
    for label, key in keys:
        v = sorted(c[key] for c in cyc)
        w(f"  {label:46}{pct(v, 0.5):>9.1f}{pct(v, 0.99):>9.1f}{v[-1]:>9.1f}")
    ext = [c["ext_shown_ms"] for c in cyc if c["ext_shown_ms"]]
    if ext:
        w(
            f"  shown paused on the watch stream (median over cycles): first external subsystem "
            f"{median([e[0] for e in ext]):.1f} ms, half of them {median([e[1] for e in ext]):.1f} ms, "
            f"the last {median([e[2] for e in ext]):.1f} ms"
        )
    names = sorted({n for c in cyc for n in c["builtin_shown_ms"]})
    if names:
        shown = ", ".join(
            f"{n} {median([c['builtin_shown_ms'][n] for c in cyc if n in c['builtin_shown_ms']]):.1f}" for n in names
        )
        w(f"  built-in subsystems shown paused/drained (median ms): {shown}")
    lasts: dict[str, int] = {}
    for c in cyc:
        key = c["last_shown"] if not str(c["last_shown"]).startswith("ext-") else "an external subsystem"
        lasts[key] = lasts.get(key, 0) + 1
    w("  the last one shown: " + ", ".join(f"{k} in {v} cycle(s)" for k, v in sorted(lasts.items(), key=lambda kv: -kv[1])))
    w(
        f"  events per cycle (enable + disable): {median([c['events'] for c in cyc]):.0f}; "
        f"watchers caught up after each cycle in {median([s['waited_ms'] for s in res['syncs'][: len(cyc)]]):.0f} ms (median)"
    )
    w("")
    cr = res["crowd"]
    w(
        f"2. status, one request at a time every {args.status_interval * 1000:.0f} ms from the sampler, "
        f"reply {cr['status_sizes'][0]:,}-{cr['status_sizes'][1]:,} bytes, ms:"
    )
    w(f"  {'':46}{'n':>6}{'p50':>9}{'p99':>9}{'max':>9}")
    status_all: list[float] = []
    for phase, label in (("steady", "steady (no changes: the cached reply)"), ("cycles", "during the cycles and probes")):
        v = sorted(cr["status_ms"].get(phase, []))
        status_all += v
        if v:
            w(f"  {label:46}{len(v):>6}{pct(v, 0.5):>9.1f}{pct(v, 0.99):>9.1f}{v[-1]:>9.1f}")
    status_all.sort()
    w(
        f"  status reply errors {cr['status_errors']}; pings {cr['pings']:,}: p50 {cr['ping_p50_ms']:.2f} ms, "
        f"p99 {cr['ping_p99_ms']:.2f} ms, errors {cr['ping_errors']}"
    )
    w("")
    arrivals = cr["arrivals"]
    en = fanout(
        {"enable:" + c["drain_id"]: c["t_enable"] for c in cyc},
        {"enable:" + c["drain_id"]: c["observer_enable_at"] for c in cyc},
        arrivals,
        args.watchers,
    )
    di = fanout(
        {f"disable:{c['updated_on']}": c["t_disable"] for c in cyc},
        {f"disable:{c['updated_on']}": c["observer_disable_at"] for c in cyc},
        arrivals,
        args.watchers,
    )
    pr = fanout(
        {f"probe:{i}": p["t_sent"] for i, p in enumerate(res["probes"])},
        {f"probe:{i}": p["observer_at"] for i, p in enumerate(res["probes"])},
        arrivals,
        args.watchers,
    )
    probe_bytes = res["probes"][0]["line_bytes"] if res["probes"] else 0
    w(f"3. event fan-out to {args.watchers} watchers, request sent -> event line at each watcher, ms:")
    w(f"  {'':46}{'lines':>7}{'p50':>9}{'p99':>9}{'max':>9}{'last*':>9}")
    for label, f in (
        ("enable -> state_changed", en),
        ("disable -> state_changed", di),
        (f"in_flight ({probe_bytes:,} B) -> in_flight_changed", pr),
    ):
        w(f"  {label:46}{f['n']:>7}{f['p50']:>9.1f}{f['p99']:>9.1f}{f['max']:>9.1f}{f['last_median']:>9.1f}")
    w("  * last: the time until the last watcher had it, median over the requests")
    lost = res["subs"]["lost_count"] + cr["lost_count"]
    missing = en["missing"] + di["missing"] + pr["missing"]
    w(
        f"  missing event lines {missing}; seq gaps {cr['gaps'] + res['subs']['gaps']} (watchers with gaps "
        f"{cr['watchers_with_gaps']}); unexpected lines {cr['unexpected_lines']}; connections lost {lost}"
    )
    w("")
    rss = res["rss"]
    w(f"4. daemon (pid {res['pid']}) memory and threads:")
    for label, m in rss.items():
        w(f"  {label:20} VmRSS {mib(m['VmRSS']):7.1f} MiB   VmHWM {mib(m['VmHWM']):7.1f} MiB   threads {m['Threads']}")
    w(
        f"  daemon CPU during steady + cycles + probes: {res['daemon_cpu_s']:.1f} s; load generators' CPU: subsystems "
        f"{res['subs']['usage']['cpu_s']:.1f} s, crowd {cr['usage']['cpu_s']:.1f} s"
    )
    log = res["log"]
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line or "<4>" in line or "<3>" in line]
    w(f"  daemon log: {len(warnings)} warning/error line(s); exit code after SIGTERM {res['exit_code']}")
    for line in warnings[:5]:
        w(f"    {line[:200]}")
    w("")
    w("targets:")
    p99 = pct(sorted(c["all_paused_ms"] for c in cyc), 0.99)
    ok = p99 < TARGET_ENABLE_P99_MS
    w(f"  {f'enable -> all IntakePaused p99 under {TARGET_ENABLE_P99_MS:g} ms':46}p99 = {p99:.1f} ms   {verdict(ok)}")
    sp99 = pct(status_all, 0.99)
    ok = sp99 < TARGET_STATUS_P99_MS and not cr["status_errors"]
    shown = f"p99 = {sp99:.1f} ms ({len(status_all)} requests, {cr['status_sizes'][1]:,} bytes)"
    w(f"  {f'status p99 under {TARGET_STATUS_P99_MS:g} ms':46}{shown}   {verdict(ok)}")
    peak = max(mib(res["max_rss_kb"]), mib(rss["end"]["VmHWM"]))
    shown = f"VmRSS max {mib(res['max_rss_kb']):.1f} MiB, VmHWM {mib(rss['end']['VmHWM']):.1f} MiB"
    w(f"  {f'daemon RSS under {TARGET_RSS_MIB:g} MiB':46}{shown}   {verdict(peak < TARGET_RSS_MIB)}")
    healthy = lost == 0 and missing == 0 and cr["gaps"] == 0 and cr["ping_errors"] == 0 and cr["status_errors"] == 0
    shown = f"lost connections {lost}, missing event lines {missing}, seq gaps {cr['gaps']}"
    w(f"  {'no errors, disconnects or lost events':46}{shown}   {verdict(healthy)}")
    w(f"total time {total:.1f} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load benchmark: one daemon with many connections, watchers, subsystems and jobs."
    )
    parser.add_argument("--connections", type=int, default=1000, help="control connections in all (default 1000)")
    parser.add_argument("--watchers", type=int, default=500, help="of which watch connections (default 500)")
    parser.add_argument("--subsystems", type=int, default=100, help="of which registered subsystems (default 100)")
    parser.add_argument("--items", type=int, default=100, help="in-flight items each subsystem reports (default 100)")
    parser.add_argument("--jobs", type=int, default=10_000, help="scheduled jobs (default 10000)")
    parser.add_argument("--cycles", type=int, default=20, help="enable/disable cycles (default 20)")
    parser.add_argument("--probes", type=int, default=20, help="in_flight fan-out probes (default 20)")
    parser.add_argument(
        "--status-interval", type=float, default=0.1, help="seconds between the sampler's status requests (default 0.1)"
    )
    parser.add_argument("--source", type=Path, default=REPO, help="source tree to run maintd from (default: this checkout)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="200 connections (100 watch, 20 subsystems x 20 items), 1,000 jobs, 5 cycles, 5 probes",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.connections, args.watchers, args.subsystems, args.items = 200, 100, 20, 20
        args.jobs, args.cycles, args.probes = 1000, 5, 5
    if (
        args.watchers < 1
        or not 1 <= args.subsystems <= 1000
        or args.connections < args.watchers + args.subsystems + 2
        or args.connections > 20_000
        or not 1 <= args.items <= 10_000
        or not 1 <= args.jobs <= 100_000
        or not 1 <= args.cycles <= 1000
        or not 0 <= args.probes <= 1000
        or not 0.01 <= args.status_interval <= 10
    ):
        parser.error(
            "need 1-1000 subsystems, at least 1 watcher, connections >= watchers + subsystems + 2 (at most 20000), "
            "items 1-10000, jobs 1-100000, cycles 1-1000, probes 0-1000, --status-interval 0.01-10 s"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that every process is stopped and the files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_nofile()
    if nofile() < args.connections + 100:
        print(
            f"load.py: RLIMIT_NOFILE is {nofile()} (hard limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}); "
            f"{args.connections} connections need more",
            file=sys.stderr,
        )
        return 2
    source = args.source.resolve()
    env = source_env(source)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="maintd-load-bench-"))
    try:
        res = run_all(tmp, args, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, source, res, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_subsystems":
        sys.exit(subsystems_main(sys.argv[2]))
    if len(sys.argv) > 2 and sys.argv[1] in ("_crowd", "_sampler"):
        sys.exit(crowd_main(sys.argv[2]))
    sys.exit(main())
