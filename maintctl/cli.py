"""``maintctl``: put maintd into maintenance mode, watch the drain, ask if it is safe to restart.

Kept lean: it imports argparse, socket and msgspec, never trio or the actors.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import msgspec

from actors.definitions import parse_duration
from daemon.paths import default_socket

from . import render
from .client import Client, DaemonError, Unreachable

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_SAFE = 4

EPILOG = """\
exit codes:
  0  done (for wait: safe to restart)
  1  maintd refused the request (the message says why: conflict, forbidden, not_found, ...)
  2  bad arguments
  3  maintd is not running or cannot be reached
  4  not safe to restart (wait: the timeout passed before it was; why: something holds it)

a maintenance window:
  maintctl enable --reason "upgrade to 2.0" --deadline 30m
  maintctl wait --timeout 45m && systemctl restart my-job-server
  maintctl disable
"""


#: The longest --deadline or --timeout: the daemon's own bound on a drain deadline
#: (daemon/protocol.py), and far below what a socket timeout can hold.
MAX_DURATION_DAYS = 366


def duration(text: str) -> float:
    """A duration argument in seconds, from zero to :data:`MAX_DURATION_DAYS` days.

    ``parse_duration`` takes any run of digits, so ``100000000d`` (or 400 digits, which
    make ``inf``) would reach a socket timeout and raise OverflowError, or go to the
    daemon as JSON ``null``: refused here as a usage error (exit 2) that gives the bound.
    """
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 0 <= seconds <= MAX_DURATION_DAYS * 86400:  # also false for NaN
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is too long: at most {MAX_DURATION_DAYS}d")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket", default=argparse.SUPPRESS, help="control socket (default: $MAINTD_SOCKET or the daemon's default)"
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the daemon's JSON result as it is")
    parser = argparse.ArgumentParser(
        prog="maintctl",
        description="Control maintd's maintenance mode.",
        parents=[common],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("status", parents=[common], help="maintenance state, subsystems and what is running")
    enable = sub.add_parser("enable", parents=[common], help="turn maintenance mode on and start the drain")
    enable.add_argument("--reason", help="why (shown in status and the history)")
    enable.add_argument("--deadline", type=duration, metavar="DURATION", help="e.g. 30m: mark the drain overdue after this")
    enable.add_argument("--cancel-at-deadline", action="store_true", help="at the deadline, cancel every cancellable item")
    enable.add_argument(
        "--dry-run", action="store_true", help="change nothing: print what the deadline would do (needs --deadline)"
    )
    preview = sub.add_parser(
        "deadline-preview", parents=[common], help="what the running drain's deadline (or --deadline) would do, from the ETAs"
    )
    preview.add_argument("--deadline", type=duration, metavar="DURATION", help="from now (default: the drain's own deadline)")
    preview.add_argument(
        "--cancel-at-deadline", action="store_true", default=None, help="as if it cancelled (default: the drain's own choice)"
    )
    sub.add_parser("why", parents=[common], help="what holds back safe to restart, and how to cancel it (exit 4: not safe)")
    disable = sub.add_parser("disable", parents=[common], help="turn maintenance mode off; every subsystem resumes")
    disable.add_argument("--reason")
    sub.add_parser("inflight", parents=[common], help="list the work in flight")
    cancel = sub.add_parser("cancel", parents=[common], help="cancel in-flight items (never a material update)")
    cancel.add_argument("items", nargs="+", metavar="ITEM", help="item id as `maintctl inflight` shows it")
    cancel.add_argument("--reason")
    sub.add_parser("watch", parents=[common], help="print every state and in-flight change as it happens")
    wait = sub.add_parser("wait", parents=[common], help="wait until it is safe to restart (exit 0), or the timeout (exit 4)")
    wait.add_argument("--timeout", type=duration, metavar="DURATION", help="give up after this long (default: wait forever)")
    sub.add_parser("history", parents=[common], help="who turned maintenance on and off, and what was cancelled")
    sub.add_parser("pipelines", parents=[common], help="the configured pipelines (config file and config repos)")
    trigger = sub.add_parser("trigger", parents=[common], help="run a pipeline now (refused during maintenance)")
    trigger.add_argument("pipeline")
    runs = sub.add_parser("runs", parents=[common], help="recent pipeline runs and their job results")
    runs.add_argument("--pipeline")
    runs.add_argument("--limit", type=int, default=10)
    sub.add_parser("agents", parents=[common], help="the agents and what each is building")
    logs = sub.add_parser("logs", parents=[common], help="the output of a job (its id as `maintctl runs` shows it)")
    logs.add_argument("job", type=int)
    logs.add_argument("--bytes", type=int, default=65536, help="show at most this many bytes from the end")
    pipeline = sub.add_parser("pipeline", parents=[common], help="pause or unpause a pipeline (refused during maintenance)")
    pipeline.add_argument("action", choices=("pause", "unpause"))
    pipeline.add_argument("pipeline")
    sub.add_parser("reload", parents=[common], help="re-read the config file's pipelines (refused during maintenance)")
    cancel_run = sub.add_parser("cancel-run", parents=[common], help="cancel a run's (or a stage's) building and scheduled jobs")
    cancel_run.add_argument("run", metavar="PIPELINE/COUNTER")
    cancel_run.add_argument("--stage")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "enable" and args.cancel_at_deadline and args.deadline is None:
        print("maintctl: --cancel-at-deadline needs --deadline", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "enable" and args.dry_run and args.deadline is None:
        print("maintctl: --dry-run previews a deadline: give --deadline (`maintctl status` shows the ETA)", file=sys.stderr)
        return EXIT_USAGE
    path = str(getattr(args, "socket", None) or default_socket())
    as_json = getattr(args, "json", False)
    try:
        with Client(path) as client:
            return COMMANDS[args.command](client, args, as_json)
    except Unreachable as exc:
        print(render.terminal(f"maintctl: {exc}"), file=sys.stderr)
        return EXIT_UNREACHABLE
    except DaemonError as exc:
        print(render.terminal(f"maintctl: {exc.code}: {exc.message}"), file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def out(value: Any, as_json: bool, text: str) -> None:
    print(msgspec.json.encode(value).decode() if as_json else render.terminal(text), flush=True)


def cmd_status(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("status")
    out(result, as_json, render.status(result))
    return EXIT_OK


def cmd_enable(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if args.dry_run:
        return preview(client, args.deadline, args.cancel_at_deadline, as_json, dry_run=True)
    result = client.request(
        "enable",
        reason=args.reason,
        deadline_seconds=args.deadline,
        on_deadline="cancel" if args.cancel_at_deadline else None,
    )
    text = render.maintenance_line(result) + "\n" + render.safe_line(result)
    if not result["safe_to_restart"]:
        text += "\n`maintctl wait` returns once it is safe to restart."
    out(result, as_json, text)
    return EXIT_OK


def preview(client: Client, deadline: float | None, cancel: bool | None, as_json: bool, *, dry_run: bool) -> int:
    """``enable --dry-run`` and ``deadline-preview``: a read; nothing changes."""
    from . import foresight

    result = client.request("preview", deadline_seconds=deadline, cancel_at_deadline=cancel)
    enabled = True
    text = ""
    if dry_run:
        m = client.request("status")["maintenance"]
        enabled = m["enabled"]
        if enabled:
            text = f"Maintenance mode is already on ({m['state']}): enable would be refused (conflict).\n"
    out(result, as_json, text + foresight.preview(result, dry_run=dry_run, enabled=enabled))
    return EXIT_OK


def cmd_deadline_preview(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    return preview(client, args.deadline, args.cancel_at_deadline, as_json, dry_run=False)


def cmd_why(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    from . import foresight

    held = foresight.holding(client.request("status"))
    out(held, as_json, foresight.why(held))
    return EXIT_OK if held["safe_to_restart"] else EXIT_NOT_SAFE


def cmd_disable(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("disable", reason=args.reason)
    out(result, as_json, "Maintenance mode: off; every subsystem resumes its intake.")
    return EXIT_OK


def cmd_inflight(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("inflight")
    items = result["items"]
    out(result, as_json, "\n".join(render.items_table(items)) if items else "nothing in flight")
    return EXIT_OK


def cmd_cancel(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    code = EXIT_OK
    results = []
    for item in args.items:
        try:
            result = client.request("cancel", item=item, reason=args.reason)
        except DaemonError as exc:
            code = EXIT_REFUSED
            results.append({"item": item, "cancelled": False, "error": {"code": exc.code, "message": exc.message}})
            if not as_json:
                print(render.terminal(f"maintctl: {item}: {exc.code}: {exc.message}"), file=sys.stderr)
            continue
        results.append(result)
        if not as_json:
            print(render.terminal(f"cancelled {result['item']}"))
    if as_json:
        out(results, True, "")
    return code


def cmd_watch(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    snapshot = client.request("watch")
    out(snapshot, as_json, render.status(snapshot) + "\n")
    while True:
        message = client.read(timeout=None)
        if message is not None and message.get("type") == "event":
            out(message, as_json, render.event(message))


def cmd_wait(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    tty = sys.stderr.isatty() and not as_json
    status = client.request("watch")
    safe = status["maintenance"]["safe_to_restart"]
    shown = ""
    while not safe:
        if tty:
            line = render.progress(status)
            if line != shown:
                sys.stderr.write("\r\x1b[K" + line)
                sys.stderr.flush()
                shown = line
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            if tty:
                sys.stderr.write("\n")
            status = client.request("status")
            items = render.remaining(status)
            out(
                status,
                as_json,
                "Not safe to restart: the timeout passed.\n"
                + render.progress(status)
                + ("\n" + "\n".join(render.items_table(items)) if items else ""),
            )
            return EXIT_NOT_SAFE
        message = client.events.pop(0) if client.events else client.read(timeout=left)
        if message is not None and message.get("type") == "event":
            # Each event carries the maintenance state as of that event: it decides.
            safe = message["maintenance"]["safe_to_restart"]
            if tty and not safe:
                status = client.request("status")
    if tty and shown:
        sys.stderr.write("\n")
    out(status if not as_json else client.request("status"), as_json, "Safe to restart.")
    return EXIT_OK


def cmd_history(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("history")
    lines = []
    for e in render.clean(result["entries"]):
        what = e["action"] + (f" {e['item']}" if e.get("item") else "")
        states = f" ({e['from_state']} -> {e['to_state']})" if e.get("to_state") else ""
        why = f": {e['reason']}" if e.get("reason") else ""
        why += f" ({e['detail']})" if e.get("detail") else ""
        lines.append(f"{render.iso(e['at'])}  {e['by']:<12} {what}{states}{why}")
    out(result, as_json, "\n".join(lines) or "no history yet")
    return EXIT_OK


def cmd_pipelines(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("pipelines")
    out(result, as_json, render.pipelines(result["pipelines"]))
    return EXIT_OK


def cmd_trigger(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("trigger", pipeline=args.pipeline)
    out(result, as_json, f"triggered {result['pipeline']}/{result['counter']}")
    return EXIT_OK


def cmd_runs(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("runs", pipeline=args.pipeline, limit=args.limit)
    out(result, as_json, render.runs(result["runs"]))
    return EXIT_OK


def cmd_agents(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("agents")
    out(result, as_json, render.agents(result["agents"]))
    return EXIT_OK


def cmd_logs(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("logs", job=args.job, max_bytes=args.bytes)
    if as_json:
        out(result, True, "")
    else:
        if result["truncated"]:
            print(f"[... showing the last {len(result['text'].encode())} of {result['size']} bytes]")
        sys.stdout.write(render.escape(result["text"], keep="\n\t"))
        sys.stdout.flush()
    return EXIT_OK


def cmd_pipeline(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request(f"pipeline_{args.action}", pipeline=args.pipeline)
    out(result, as_json, f"pipeline {args.pipeline} {args.action}d")
    return EXIT_OK


def cmd_reload(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("reload")
    out(result, as_json, f"configuration reloaded: {result['pipelines']} pipeline(s)")
    return EXIT_OK


def cmd_cancel_run(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    pipeline, _, counter = args.run.rpartition("/")
    if not pipeline or not counter.isdigit():
        print("maintctl: give the run as PIPELINE/COUNTER, e.g. build/12", file=sys.stderr)
        return EXIT_USAGE
    result = client.request("cancel_run", pipeline=pipeline, counter=int(counter), stage=args.stage)
    out(result, as_json, f"cancelling {result['cancelled_jobs']} job(s) of {pipeline}/{counter}")
    return EXIT_OK


COMMANDS = {
    "pipelines": cmd_pipelines,
    "trigger": cmd_trigger,
    "runs": cmd_runs,
    "agents": cmd_agents,
    "logs": cmd_logs,
    "pipeline": cmd_pipeline,
    "reload": cmd_reload,
    "cancel-run": cmd_cancel_run,
    "status": cmd_status,
    "enable": cmd_enable,
    "disable": cmd_disable,
    "inflight": cmd_inflight,
    "cancel": cmd_cancel,
    "watch": cmd_watch,
    "wait": cmd_wait,
    "history": cmd_history,
    "deadline-preview": cmd_deadline_preview,
    "why": cmd_why,
}

if __name__ == "__main__":
    sys.exit(main())
