"""Benchmark of the control socket: round trip, throughput and maintctl start-up.

Not a test: it measures and prints, next to the targets. One run does:

1. ``status`` round trip p50/p99 with one client doing sequential requests, against the
   real daemon (``python -m daemon``) started as a subprocess in a temporary directory;
2. ``status`` requests/s with N concurrent clients (request, wait for the reply, next
   request), driven from a separate load-generator process so that the server does not
   share a GIL with the clients;
3. the same two figures against a "floor" server defined here: trio on a Unix socket,
   each line decoded by one msgspec Decoder of a tagged Struct, answered with a reply of
   the same size as the daemon's status reply (the daemon's own status JSON, pre-encoded,
   with the request id echoed). It is the floor of trio + msgspec line serving;
4. the daemon/floor ratios;
5. ``maintctl status`` as a whole process (median, p90 over a number of runs), next to
   ``python -c pass`` as the floor of a Python process start and ``supervisorctl status``
   as a peer: supervisor from PyPI (``pip install -e '.[bench]'``), talking to a
   supervisord of the bench's own on a Unix socket in the same temporary directory, with
   one program running. ``--startup-only`` measures only this part (about 10 s).

The same client code (sequential client and load generator) drives both servers. Both
servers run for the whole measurement and are measured in alternating rounds (daemon,
floor, floor, daemon, ...), so that other work on the machine hits both alike; the
server is pinned to one core and the clients to the other (see ``placement``). Every
process this script starts is stopped in a ``finally`` (and the floor server also stops
by itself after a bounded time). Only Unix sockets in a temporary directory are used.

    /tmp/venv/bin/python bench/control.py            # full run (about 15 s)
    /tmp/venv/bin/python bench/control.py --quick    # shorter, noisier
    /tmp/venv/bin/python bench/control.py --source /tmp/other-checkout   # another tree
    .venv/bin/python bench/control.py --startup-only --runs 40              # maintctl start-up only

Internal roles (used by the script itself): ``control.py _floor SOCKET RESULT_FILE MAX_S`` runs
the floor server, ``control.py _load SOCKET CLIENTS DURATION WARMUP`` the load generator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import IO_TIMEOUT, describe_tree, median, pct, source_env, stop_process, verdict

# Targets, printed next to the figures.
TARGET_P50_RATIO = 3.0
TARGET_RPS = 15_000
#: ``maintctl status`` (the console script) against ``python -c pass`` (same interpreter).
TARGET_MAINTCTL_RATIO = 1.5

STATUS_PREFIX = b'{"id":'
HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
START_TIMEOUT = 30.0


# --------------------------------------------------------------------------------------
# Floor server (runs in its own process: ``control.py _floor``)
# --------------------------------------------------------------------------------------


def floor_main(path: str, result_file: str, max_seconds: float) -> int:
    """trio + msgspec serving newline-delimited JSON: the least any such server can do."""
    from typing import Union

    import msgspec
    import trio

    class Req(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
        id: int | str | None = None

    class StatusReq(Req, tag="status"):
        pass

    class PingReq(Req, tag="ping"):
        pass

    decoder = msgspec.json.Decoder(Union[StatusReq, PingReq])
    encoder = msgspec.json.Encoder()
    result_json = Path(result_file).read_bytes()
    head = b'{"id":'
    tail = b',"ok":true,"result":' + result_json + b"}\n"

    async def handle(stream: trio.SocketStream) -> None:
        buffer = bytearray()
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
                out = []
                start = 0
                while (end := buffer.find(b"\n", start)) >= 0:
                    request = decoder.decode(buffer[start:end])
                    start = end + 1
                    out.append(head + encoder.encode(request.id) + tail)
                del buffer[:start]
                if out:
                    await stream.send_all(out[0] if len(out) == 1 else b"".join(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    async def serve() -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(path)
        sock.listen(1024)
        listener = trio.SocketListener(sock)
        print("ready", file=sys.stderr, flush=True)
        # Bounded: a floor server left behind by a killed parent goes away by itself.
        with trio.move_on_after(max_seconds):
            await trio.serve_listeners(handle, [listener])

    trio.run(serve)
    return 0


# --------------------------------------------------------------------------------------
# Load generator (runs in its own process: ``control.py _load``); plain epoll, no trio,
# so that the client side costs as little CPU as possible on a 2-core machine.
# --------------------------------------------------------------------------------------


def load_main(path: str, clients: int, duration: float, warmup: float) -> int:
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    bufs: dict[int, bytes] = {}
    seqs: dict[int, int] = {}
    sent_at: dict[int, int] = {}
    latencies: list[int] = []
    errors = 0
    completed = 0
    outstanding = 0
    perf = time.perf_counter_ns
    try:
        for _ in range(clients):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(IO_TIMEOUT)
            s.connect(path)
            s.setblocking(False)
            fd = s.fileno()
            socks[fd] = s
            bufs[fd] = b""
            seqs[fd] = 0
            ep.register(fd, select.EPOLLIN)

        def send(fd: int) -> None:
            nonlocal outstanding
            seqs[fd] += 1
            line = b'{"id":%d,"type":"status"}\n' % seqs[fd]
            sent_at[fd] = perf()
            # A request is ~30 bytes: it always fits an empty socket buffer.
            if socks[fd].send(line) != len(line):
                raise RuntimeError("short send")
            outstanding += 1

        t_start = perf()
        t_measure = t_start + int(warmup * 1e9)
        t_end = t_measure + int(duration * 1e9)
        hard_deadline = t_end + int(IO_TIMEOUT * 1e9)
        for fd in socks:
            send(fd)
        sending = True
        cpu_measure = cpu_end = None
        while outstanding:
            now = perf()
            if now > hard_deadline:
                raise RuntimeError(f"{outstanding} replies still missing after the run")
            if cpu_measure is None and now >= t_measure:
                cpu_measure = time.process_time()
            if sending and now >= t_end:
                sending = False
                cpu_end = time.process_time()
            events = ep.poll(1.0)
            if not events:
                continue
            for fd, _ev in events:
                data = socks[fd].recv(65536)
                if not data:
                    raise RuntimeError("the server closed a connection")
                buf = bufs[fd] + data
                if buf[-1:] != b"\n":
                    bufs[fd] = buf
                    continue
                bufs[fd] = b""
                done = perf()
                outstanding -= 1
                if buf.count(b"\n") != 1 or not buf.startswith(STATUS_PREFIX) or b'"ok":true' not in buf:
                    errors += 1
                    if errors == 1:
                        print(f"unexpected reply: {buf[:300]!r}", file=sys.stderr)
                if t_measure <= done < t_end:
                    completed += 1
                    latencies.append(done - sent_at[fd])
                if sending:
                    if done < t_end:
                        send(fd)
                    else:
                        sending = False
                        cpu_end = time.process_time()
        latencies.sort()
        result = {
            "clients": clients,
            "completed": completed,
            "seconds": duration,
            "rps": completed / duration,
            "p50_us": pct(latencies, 0.50) / 1000,
            "p99_us": pct(latencies, 0.99) / 1000,
            "errors": errors,
            # Share of one core the load generator used while measuring: near 100 % means
            # the figure is bounded by the client, not the server.
            "client_cpu": (cpu_end - cpu_measure) / duration if cpu_measure is not None and cpu_end is not None else None,
        }
    finally:
        for s in socks.values():
            s.close()
        ep.close()
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------
# Measuring, in the main process
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def pinned(cpus: set[int] | None):
    """Run the block (and the processes it starts, with all their threads) on ``cpus``."""
    if cpus is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def placement(args: argparse.Namespace) -> None:
    """Choose the CPUs: the servers on one core, the load generator and maintctl on another.

    Unpinned, the 1-client round trip swings between ~20 us (client and server take turns
    on one core) and ~100 us (a cross-core wake-up) from run to run, at the scheduler's
    whim, which makes a daemon/floor ratio meaningless. Pinned, it is measured twice:
    "same core" (the client on the server's core: the CPU cost of a round trip, the most
    repeatable figure) and "cross core" (the client on the other core, with the wake-up of
    an idle core in every round trip).
    """
    args.server_cpus = args.client_cpus = None
    args.seq_layouts = [("unpinned", None)]
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = []
    if args.pin == "off" or len(cpus) < 2:
        args.pin = "off"
        return
    args.server_cpus, args.client_cpus = {cpus[-1]}, {cpus[0]}
    args.seq_layouts = [("same core", args.server_cpus), ("cross core", args.client_cpus)]


class Server:
    """A server process of ours: started pinned, stopped (TERM, then KILL) on exit."""

    def __init__(self, name: str, cmd: list[str], sock: str, tmp: Path, args: argparse.Namespace, env: dict) -> None:
        self.name = name
        self.sock = sock
        self.log_path = tmp / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        with open(self.log_path, "wb") as log, pinned(args.server_cpus):
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp), env=env
            )

    def __enter__(self) -> Server:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is not None:
                tail = self.log_path.read_bytes()[-3000:].decode(errors="replace")
                if tail.strip():
                    print(f"--- {self.name} log (tail) ---\n{tail}\n---", file=sys.stderr)
        finally:
            self.stop()

    def stop(self) -> None:
        stop_process(self.proc)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} before serving")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.sock)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.02)
            finally:
                s.close()
        raise RuntimeError(f"{self.name}: nobody answered on {self.sock} within {timeout:.0f} s")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited during the run with code {self.proc.returncode}")

    def status_once(self) -> bytes:
        client = LineClient(self.sock)
        try:
            return client.status()
        finally:
            client.close()


class LineClient:
    """A blocking client for sequential round trips (same code for both servers)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(path)
        self.n = 0

    def close(self) -> None:
        self.sock.close()

    def status(self) -> bytes:
        self.n += 1
        self.sock.sendall(b'{"id":%d,"type":"status"}\n' % self.n)
        buf = self.sock.recv(65536)
        while buf[-1:] != b"\n":
            more = self.sock.recv(65536)
            if not more:
                raise RuntimeError("the server closed the connection")
            buf += more
        return buf


def sequential(client: LineClient, count: int) -> list[int]:
    """``count`` round trips, in ns each."""
    perf = time.perf_counter_ns
    times = []
    for _ in range(count):
        t0 = perf()
        reply = client.status()
        times.append(perf() - t0)
        if not reply.startswith(STATUS_PREFIX) or b'"ok":true' not in reply:
            raise RuntimeError(f"unexpected reply {reply[:200]!r}")
    return times


def round_order(names: list[str], r: int) -> list[str]:
    """ABBA order over rounds, so neither server is always measured first."""
    return names if r % 2 == 0 else names[::-1]


def measure_sequential(servers: dict[str, Server], args: argparse.Namespace) -> dict:
    """Per layout and server: p50/p99 over all rounds' samples."""
    names = list(servers)
    per_round = max(1, args.requests // args.rounds)
    result: dict[str, dict[str, dict]] = {}
    for label, cpus in args.seq_layouts:
        with pinned(cpus):
            clients = {name: LineClient(servers[name].sock) for name in names}
            try:
                for name in names:
                    sequential(clients[name], args.warmup)
                samples: dict[str, list[int]] = {name: [] for name in names}
                for r in range(args.rounds):
                    for name in round_order(names, r):
                        samples[name] += sequential(clients[name], per_round)
            finally:
                for client in clients.values():
                    client.close()
        result[label] = {}
        for name, times in samples.items():
            times.sort()
            result[label][name] = {"count": len(times), "p50_us": pct(times, 0.5) / 1000, "p99_us": pct(times, 0.99) / 1000}
    return result


def run_load(path: str, args: argparse.Namespace, env: dict) -> dict:
    cmd = [sys.executable, str(HERE), "_load", path, str(args.clients), str(args.duration), str(args.load_warmup)]
    timeout = args.duration + args.load_warmup + IO_TIMEOUT + 20
    with pinned(args.client_cpus):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_load(servers: dict[str, Server], args: argparse.Namespace, env: dict) -> dict:
    """Per server: every round's figures; the round with the median req/s stands for it."""
    names = list(servers)
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in round_order(names, r):
            rounds[name].append(run_load(servers[name].sock, args, env))
    result = {}
    for name, figures in rounds.items():
        by_rps = sorted(figures, key=lambda f: f["rps"])
        mid = dict(by_rps[(len(by_rps) - 1) // 2])
        mid["best_rps"] = by_rps[-1]["rps"]
        mid["all_rps"] = [f["rps"] for f in figures]
        mid["errors"] = sum(f["errors"] for f in figures)
        result[name] = mid
    return result


def run_timed(cmd: list[str], env: dict, timeout: float = 30.0) -> float:
    """Wall time of one run, in ms. No ``subprocess.run(timeout=)``: its wait polls with
    doubling sleeps (0.5, 1, 2 ... 50 ms), which rounds every time up to 32 or 64 ms. The
    bound comes from a timer thread that kills the process instead."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        code = proc.wait()
    finally:
        killer.cancel()
    elapsed = (time.perf_counter() - t0) * 1000
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with code {code}")
    return elapsed


def time_processes(cmds: dict[str, list[str]], runs: int, env: dict, cpus: set[int] | None) -> dict:
    """Wall time of each command, run in turn (interleaved, so that noise hits all alike)."""
    times: dict[str, list[float]] = {name: [] for name in cmds}
    with pinned(cpus):
        for cmd in cmds.values():
            run_timed(cmd, env)  # one untimed run first: page cache and .pyc files
        for _ in range(runs):
            for name, cmd in cmds.items():
                times[name].append(run_timed(cmd, env))
    result = {}
    for name, values in times.items():
        values.sort()
        result[name] = {"runs": runs, "median_ms": median(values), "p90_ms": pct(values, 0.9), "min_ms": values[0]}
    return result


def extract_result(reply: bytes) -> bytes:
    """The ``result`` part of an ``ok_reply_raw`` line, as the bytes the daemon sent."""
    marker = b',"ok":true,"result":'
    body = reply.rstrip(b"\n")
    if marker not in body or not body.endswith(b"}"):
        raise RuntimeError(f"unexpected status reply: {reply[:300]!r}")
    return body[body.index(marker) + len(marker) : -1]


def supervisor_peer(tmp: Path) -> tuple[list[str], list[str]] | None:
    """``(supervisord command, supervisorctl status command)`` on a config in ``tmp``, or
    None when supervisor is not installed next to this interpreter."""
    bindir = Path(sys.executable).parent
    supervisord, supervisorctl = bindir / "supervisord", bindir / "supervisorctl"
    if not (supervisord.exists() and supervisorctl.exists()):
        return None
    conf = tmp / "supervisord.conf"
    conf.write_text(
        f"[unix_http_server]\nfile={tmp}/supervisor.sock\n\n"
        f"[supervisord]\nlogfile={tmp}/supervisord.log\npidfile={tmp}/supervisord.pid\nchildlogdir={tmp}\nnodaemon=true\n\n"
        "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        f"[supervisorctl]\nserverurl=unix://{tmp}/supervisor.sock\n\n"
        "[program:sleeper]\ncommand=sleep 3600\nstartsecs=0\nstopsignal=KILL\n"
    )
    return [str(supervisord), "-n", "-c", str(conf)], [str(supervisorctl), "-c", str(conf), "status"]


def wait_running(cmd: list[str], env: dict, timeout: float = START_TIMEOUT) -> None:
    """Until ``cmd`` exits 0 (``supervisorctl status`` does once every program runs)."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{' '.join(cmd)} still exits {done.returncode}: {done.stdout[-300:]}{done.stderr[-300:]}")
        time.sleep(0.1)


def measure_processes(daemon_sock: str, tmp: Path, args: argparse.Namespace, env: dict) -> dict:
    """maintctl status, python -c pass and (if installed) supervisorctl status, interleaved."""
    cmds = {"maintctl status": maintctl_cmd(daemon_sock, args)}
    if args.maintctl_module:
        cmds["python -m maintctl status"] = [sys.executable, "-m", "maintctl", "--socket", daemon_sock, "status"]
    cmds["python -c pass (floor)"] = [sys.executable, "-c", "pass"]
    peer = supervisor_peer(tmp)
    if peer is None:
        return time_processes(cmds, args.runs, env, args.client_cpus)
    supervisord, supervisorctl = peer
    with Server("supervisord", supervisord, str(tmp / "supervisor.sock"), tmp, args, env) as server:
        server.wait_ready()
        wait_running(supervisorctl, env)
        cmds["supervisorctl status (peer)"] = supervisorctl
        procs = time_processes(cmds, args.runs, env, args.client_cpus)
        server.check_alive()
    return procs


def run_startup_only(tmp: Path, args: argparse.Namespace, env: dict) -> dict:
    daemon_sock = str(tmp / "maintd.sock")
    daemon_cmd = [
        *[sys.executable, "-m", "daemon"],
        *["--socket", daemon_sock, "--state-dir", str(tmp / "state"), "--log-level", "warning", "--http", "off"],
    ]
    with Server("maintd", daemon_cmd, daemon_sock, tmp, args, env) as daemon:
        daemon.wait_ready()
        reply = daemon.status_once()
        procs = measure_processes(daemon_sock, tmp, args, env)
        daemon.check_alive()
    return {"reply": reply, "procs": procs}


def run_all(tmp: Path, args: argparse.Namespace, env: dict) -> dict:
    daemon_sock = str(tmp / "maintd.sock")
    floor_sock = str(tmp / "floor.sock")
    daemon_cmd = [
        *[sys.executable, "-m", "daemon"],
        *["--socket", daemon_sock, "--state-dir", str(tmp / "state"), "--log-level", "warning", "--http", "off"],
    ]
    with Server("maintd", daemon_cmd, daemon_sock, tmp, args, env) as daemon:
        daemon.wait_ready()
        reply = daemon.status_once()
        result_file = tmp / "status.json"
        result_file.write_bytes(extract_result(reply))
        max_seconds = 120 + 4 * args.rounds * (args.duration + args.load_warmup)
        floor_cmd = [sys.executable, str(HERE), "_floor", floor_sock, str(result_file), str(max_seconds)]
        with Server("floor", floor_cmd, floor_sock, tmp, args, env) as floor:
            floor.wait_ready()
            floor_reply = floor.status_once()
            if len(floor_reply) != len(reply):
                raise RuntimeError(f"the floor's reply is {len(floor_reply)} bytes, the daemon's {len(reply)}")
            servers = {"daemon": daemon, "floor": floor}
            seq = measure_sequential(servers, args)
            load = measure_load(servers, args, env)
            procs = measure_processes(daemon_sock, tmp, args, env)
            daemon.check_alive()
            floor.check_alive()
    return {"reply": reply, "seq": seq, "load": load, "procs": procs}


def maintctl_cmd(sock: str, args: argparse.Namespace | None) -> list[str]:
    script = Path(sys.executable).parent / "maintctl"
    if script.exists():
        return [str(script), "--socket", sock, "status"]
    return [sys.executable, "-m", "maintctl", "--socket", sock, "status"]


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def fmt_cpus(cpus: set[int] | None) -> str:
    return ",".join(map(str, sorted(cpus or ())))


def report_processes(args: argparse.Namespace, procs: dict) -> None:
    w = print
    mc = procs["maintctl status"]
    py = procs["python -c pass (floor)"]
    w(f"whole process, wall time over {mc['runs']} runs each (interleaved), ms:")
    w(f"  {'':34}{'median':>8}{'p90':>8}{'min':>8}{'/ floor':>9}")
    for name, fig in procs.items():
        ratio = fig["median_ms"] / py["median_ms"]
        w(f"  {name:34}{fig['median_ms']:>8.1f}{fig['p90_ms']:>8.1f}{fig['min_ms']:>8.1f}{ratio:>8.2f}x")
    w(f"  maintctl status over the bare interpreter start: +{mc['median_ms'] - py['median_ms']:.1f} ms (median)")
    if "supervisorctl status (peer)" not in procs:
        w("  (no supervisorctl peer: supervisor is not installed next to this python; pip install -e '.[bench]')")
    w("")
    ratio = mc["median_ms"] / py["median_ms"]
    w("targets:")
    w(
        f"  maintctl status within {TARGET_MAINTCTL_RATIO:g}x of python -c pass   median = {mc['median_ms']:.1f} ms"
        f" / {py['median_ms']:.1f} ms = {ratio:.2f}x   {verdict(ratio <= TARGET_MAINTCTL_RATIO)}"
    )


def report_header(source: Path, res: dict) -> None:
    import msgspec
    import trio

    w = print
    w(
        f"maintd control socket benchmark  (python {sys.version.split()[0]}, trio {trio.__version__}, "
        f"msgspec {msgspec.__version__}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f})"
    )
    w(f"tree: {describe_tree(source)}")
    w(f"maintctl: {' '.join(maintctl_cmd('SOCKET', None))}")
    w(f"status reply: {len(res['reply'])} bytes (the floor's reply has the same size)")


def report(args: argparse.Namespace, source: Path, res: dict) -> None:
    seq, load, procs = res["seq"], res["load"], res["procs"]
    dl, fl = load["daemon"], load["floor"]
    p50_ratios = {label: seq[label]["daemon"]["p50_us"] / seq[label]["floor"]["p50_us"] for label in seq}
    rps_ratio = dl["rps"] / fl["rps"]
    w = print
    report_header(source, res)
    if args.pin == "off":
        w("placement: unpinned (the scheduler decides; round trips are noisy)")
    else:
        w(
            f"placement: servers on cpu {fmt_cpus(args.server_cpus)}; load generator and processes on cpu "
            f"{fmt_cpus(args.client_cpus)}; the sequential client on each in turn"
        )
    w(f"daemon and floor measured in {args.rounds} alternating rounds")
    w("")
    count = next(iter(seq.values()))["daemon"]["count"]
    w(f"1 client, sequential status round trips ({count} per server and placement, after {args.warmup} warm-up), us:")
    w(f"  {'client':14}{'':8}{'p50':>9}{'p99':>9}")
    for label in seq:
        d, f = seq[label]["daemon"], seq[label]["floor"]
        w(f"  {label:14}{'daemon':8}{d['p50_us']:>9.1f}{d['p99_us']:>9.1f}")
        w(f"  {'':14}{'floor':8}{f['p50_us']:>9.1f}{f['p99_us']:>9.1f}")
        w(f"  {'':14}{'ratio':8}{p50_ratios[label]:>8.2f}x{d['p99_us'] / f['p99_us']:>8.2f}x")
    w("")
    w(
        f"{args.clients} clients, request -> reply -> next; {args.rounds} rounds of {args.duration:g} s after "
        f"{args.load_warmup:g} s warm-up each, from a separate epoll load-generator process"
    )
    w("(median round; p50/p99 latency and client cpu of that round; client cpu near 100 % = client-bound):")
    w(f"  {'':8}{'req/s':>9}{'best':>9}{'p50 us':>9}{'p99 us':>9}{'errors':>8}{'client cpu':>12}   rounds")
    for name, fig in (("daemon", dl), ("floor", fl)):
        cpu = f"{fig['client_cpu'] * 100:.0f} %" if fig["client_cpu"] is not None else "-"
        rounds = " ".join(f"{x / 1000:.1f}k" for x in fig["all_rps"])
        w(
            f"  {name:8}{fig['rps']:>9.0f}{fig['best_rps']:>9.0f}{fig['p50_us']:>9.1f}{fig['p99_us']:>9.1f}"
            f"{fig['errors']:>8}{cpu:>12}   {rounds}"
        )
    w(f"  {'ratio':8}{rps_ratio:>8.2f}x{dl['best_rps'] / fl['best_rps']:>8.2f}x")
    w("")
    report_processes(args, procs)
    shown = ", ".join(f"{r:.2f}x ({label})" for label, r in p50_ratios.items())
    w(
        f"  status p50 within {TARGET_P50_RATIO:g}x of the floor       daemon/floor = {shown}"
        f"   {verdict(all(r <= TARGET_P50_RATIO for r in p50_ratios.values()))}"
    )
    total_errors = dl["errors"] + fl["errors"]
    w(
        f"  >= {TARGET_RPS:,} status req/s, {args.clients} clients     daemon = {dl['rps']:,.0f} req/s median round"
        f" (floor {fl['rps']:,.0f}, ratio {rps_ratio:.2f}x)   {verdict(dl['rps'] >= TARGET_RPS and total_errors == 0)}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Control socket benchmark: maintd against a trio+msgspec floor, and maintctl start-up.",
    )
    parser.add_argument(
        "--requests", type=int, default=5000, help="sequential status requests timed per server and placement (default 5000)"
    )
    parser.add_argument("--warmup", type=int, default=500, help="sequential warm-up requests (default 500)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients for the throughput run (default 50)")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds measured per throughput round (default 1.5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server (default 3)")
    parser.add_argument("--load-warmup", type=float, default=0.3, help="seconds of load before each round (default 0.3)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs of maintctl status and python -c pass (default 20)")
    parser.add_argument(
        "--maintctl-module", action="store_true", help="also time `python -m maintctl status` next to the installed script"
    )
    parser.add_argument(
        "--source", type=Path, default=REPO, help="source tree to run maintd/maintctl from (default: this checkout)"
    )
    parser.add_argument(
        "--pin",
        choices=("on", "off"),
        default="on",
        help="on (default): servers on one core, load generator and processes on another, sequential round trips "
        "from both; off: leave placement to the scheduler (noisy)",
    )
    parser.add_argument(
        "--startup-only", action="store_true", help="only the whole-process timings (maintctl, python -c pass, supervisorctl)"
    )
    parser.add_argument("--quick", action="store_true", help="shorter run: 1000 requests, 1 round of 1 s of load, 8 process runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.warmup, args.duration, args.load_warmup, args.runs, args.rounds = 1000, 200, 1.0, 0.3, 8, 1
    if (
        min(args.requests, args.clients, args.runs, args.rounds) < 1
        or not 0.1 <= args.duration <= 30
        or not 0 <= args.load_warmup <= 10
        or args.warmup < 0
        or args.rounds > 10
    ):
        parser.error("counts must be positive, --rounds at most 10, --duration 0.1-30 s, --load-warmup 0-10 s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    placement(args)
    source = args.source.resolve()
    env = source_env(source)
    # As the README installs it: .pyc files written on the first run and read after. An
    # environment that forbids them (as some CI shells do) would time the compiling of
    # every maintd module on every run instead.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    tmp = Path(tempfile.mkdtemp(prefix="maintd-bench-"))
    try:
        res = run_startup_only(tmp, args, env) if args.startup_only else run_all(tmp, args, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.startup_only:
        report_header(source, res)
        print("")
        report_processes(args, res["procs"])
    else:
        report(args, source, res)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_floor":
        sys.exit(floor_main(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        sys.exit(load_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])))
    sys.exit(main())
