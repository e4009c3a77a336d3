"""Load generator "subsystems" (bench/load.py): S external subsystems, the admin connection
and the observer (one watcher), which times every enable/disable cycle and probe.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from load_loop import PROBE_RE, SEQ_RE, STEP_TIMEOUT, Conn, Loop, Lost, now_ns, raise_nofile, usage_now

SUBSYSTEMS_RE = re.compile(rb'"name":"([^"]+)","state":"([a-z]+)","in_flight":(\d+)')


def parse_subsystems(head: bytes) -> dict[str, tuple[str, int]]:
    """Name -> (state, in_flight) from the head of a status JSON (subsystems come before items)."""
    cut = head.find(b'"running_systems"')
    part = head if cut < 0 else head[:cut]
    return {m[1].decode(): (m[2].decode(), int(m[3])) for m in SUBSYSTEMS_RE.finditer(part)}


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
