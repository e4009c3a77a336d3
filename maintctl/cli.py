"""``maintctl``: put maintd into maintenance mode, watch the drain, ask if it is safe to restart.

Kept lean, because a process start is most of what ``maintctl status`` costs: before its
first byte goes out it imports socket, json and the small stdlib-only modules of maintctl,
:mod:`daemon.paths` and :mod:`daemon.escape`; never msgspec, trio, pykka or the actors
(tests/maintctl/test_lean_start.py holds it to that). A command with no arguments of its
own (``status``, ``inflight``, ...) is read by :func:`~maintctl.arguments.parse_plain` without
argparse; argparse reads every other command line (the grammar is in
:mod:`maintctl.arguments`). Whatever else a command needs is imported where it is used.
"""

from __future__ import annotations

import json
import sys
import time

from daemon.paths import default_socket

from . import render
from .arguments import build_parser, parse_plain
from .client import Client, DaemonError, Unreachable

TYPE_CHECKING = False
if TYPE_CHECKING:  # argparse is imported only for the command lines parse_plain leaves to it
    import argparse

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NOT_SAFE = 4


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = parse_plain(argv) or build_parser(argv).parse_args(argv)
    if args.command == "token":
        return cmd_token(args)
    if args.command == "enable" and args.cancel_at_deadline and args.deadline is None:
        print("maintctl: --cancel-at-deadline needs --deadline", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "enable" and args.ttl == 0:
        print("maintctl: --ttl must be more than zero", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "enable" and args.dry_run and args.deadline is None:
        print("maintctl: --dry-run previews a deadline: give --deadline (`maintctl status` shows the ETA)", file=sys.stderr)
        return EXIT_USAGE
    path = str(getattr(args, "socket", None) or default_socket())
    render.UTC = getattr(args, "utc", False)
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


def out(value: object, as_json: bool, text: str) -> None:
    """The daemon's JSON result as it came (compact, UTF-8), or ``text`` made safe for a terminal."""
    print(json.dumps(value, ensure_ascii=False, separators=(",", ":")) if as_json else render.terminal(text), flush=True)


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
        ttl_seconds=args.ttl,
        if_version=args.if_version,
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
    result = client.request("disable", reason=args.reason, if_drain_id=args.if_drain_id)
    out(result, as_json, "Maintenance mode: off; every subsystem resumes its intake.")
    return EXIT_OK


def cmd_inflight(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("inflight")
    items = result["items"]
    text = "\n".join(render.items_table(items)) if items else "nothing in flight"
    if result.get("abandoned"):
        text += "\n\nAbandoned by removed subsystems (`maintctl forget SUBSYSTEM` clears them):\n"
        text += "\n".join(render.items_table(result["abandoned"], abandoned=True))
    out(result, as_json, text)
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
    """Every change as it happens; across restarts of maintd, until Ctrl-C or ``--until``."""
    from .follow import Subscription

    until = None if args.until is None else time.monotonic() + args.until
    watch = Subscription(client, say=lambda note: print(note, file=sys.stderr if as_json else sys.stdout, flush=True))
    try:
        snapshot = watch.start()
        out(snapshot, as_json, render.status(snapshot) + "\n")
        while (message := watch.next(until)) is not None:
            if message["type"] == "snapshot":
                out(message["status"], as_json, render.status(message["status"]) + "\n")
            else:
                out(message, as_json, render.event(message))
    finally:
        watch.close()
    return EXIT_OK


def cmd_wait(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    """Until it is safe to restart (0) or the timeout (4), saying each change on the way
    (:mod:`maintctl.progress`); across restarts of maintd."""
    from .follow import Subscription
    from .progress import wait_until_safe

    talk = not as_json and not args.quiet

    def say(line: str) -> None:
        if talk:
            print(render.terminal(line), flush=True)

    watch = Subscription(client, say=say)
    try:
        safe, status = wait_until_safe(watch, args.timeout, say if talk else None)
        if not safe:
            items = render.remaining(status)
            out(
                status,
                as_json,
                "Not safe to restart: the timeout passed.\n"
                + render.progress(status)
                + ("\n" + "\n".join(render.items_table(items)) if items else ""),
            )
            return EXIT_NOT_SAFE
        out(status, as_json, "Safe to restart.")
    finally:
        watch.close()
    return EXIT_OK


def cmd_history(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("history")
    lines = []
    for e in render.clean(result["entries"]):
        what = e["action"] + (f" {e['item']}" if e.get("item") else "")
        states = f" ({e['from_state']} -> {e['to_state']})" if e.get("to_state") else ""
        why = f": {e['reason']}" if e.get("reason") else ""
        why += f" ({e['detail']})" if e.get("detail") else ""
        lines.append(f"{render.when(e['at'])}  {e['by']:<12} {what}{states}{why}")
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


def cmd_agent(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request(f"agent_{args.action}", name=args.name)
    name = render.clean(result["agent"])
    if not result["changed"]:
        text = f"agent {name} is already {args.action}d"
    elif args.action == "disable":
        busy = " it finishes its job and takes no more." if result["state"] == "building" else " it takes no more jobs."
        text = f"agent {name} disabled:{busy}"
    else:
        text = f"agent {name} enabled: it takes jobs again."
    out(result, as_json, text)
    return EXIT_OK


#: How often ``logs --follow`` asks for more (supervisorctl tail -f polls too).
FOLLOW_POLL = 0.25
#: What one ``logs`` request brings at most (the daemon's bound).
LOG_CHUNK = 16 << 20


def cmd_logs(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    if not (args.all or args.follow):
        result = client.request("logs", job=args.job, max_bytes=args.bytes)
        if as_json:
            out(result, True, "")
        else:
            if result["truncated"]:
                print(f"[... showing the last {len(result['text'].encode())} of {result['size']} bytes; --all shows it all]")
            sys.stdout.write(render.escape(result["text"], keep="\n\t"))
            sys.stdout.flush()
        return EXIT_OK
    return follow_log(client, args, as_json)


def follow_log(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    """``--all``: the whole log, page by page from its start; ``--follow``: the tail (or, with
    ``--all``, the whole), then what the job writes, until it has ended and all is shown."""
    if args.all:
        offset = 0
    else:
        offset = client.request("logs", job=args.job, max_bytes=1)["size"]
        offset = max(offset - args.bytes, 0)
    while True:
        result = client.request("logs", job=args.job, max_bytes=LOG_CHUNK, offset=offset)
        if as_json:
            out(result, True, "")
        else:
            sys.stdout.write(render.escape(result["text"], keep="\n\t"))
            sys.stdout.flush()
        whole = result["next_offset"] >= result["size"]
        offset = result["next_offset"]
        if whole and (not args.follow or result["ended"]):
            if args.follow and not as_json:
                print(f"[job {args.job} {result['state']}]", file=sys.stderr)
            return EXIT_OK
        if whole:
            time.sleep(FOLLOW_POLL)


def cmd_window(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    from . import window

    if args.cancel_at_deadline and args.deadline is None:
        print("maintctl: --cancel-at-deadline needs --deadline", file=sys.stderr)
        return EXIT_USAGE
    return window.run(client, args, as_json)


def cmd_forget(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    result = client.request("forget", subsystem=args.subsystem)
    out(result, as_json, f"cleared {result['subsystem']} and its {result['abandoned_cleared']} abandoned item(s) from the status")
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


def cmd_token(args: argparse.Namespace) -> int:
    """add / list / remove in the tokens file; needs no daemon. Imports kept here: the other
    commands never load scrypt or the config."""
    from pathlib import Path

    from daemon import tokens

    if args.action in ("add", "remove") and not args.name:
        print(f"maintctl: token {args.action} needs a NAME", file=sys.stderr)
        return EXIT_USAGE
    path = args.tokens_file
    if path is None and args.config is not None:
        from daemon import config as config_mod

        try:
            path = config_mod.load(Path(args.config)).http.tokens_file
        except config_mod.ConfigError as exc:
            print(f"maintctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if path is None:
            print(f"maintctl: {args.config} has no [http] tokens_file", file=sys.stderr)
            return EXIT_USAGE
    if path is None:
        print("maintctl: say which tokens file: --tokens-file PATH or --config PATH", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.action == "add":
            secret = tokens.add_token(Path(path), args.name, "read" if args.read_only else "admin")
            print(secret)
            print(
                f"maintctl: token {args.name} added to {path}; it is shown this once. "
                "`maintctl reload` (or SIGHUP) makes the daemon read it.",
                file=sys.stderr,
            )
        elif args.action == "remove":
            tokens.remove_token(Path(path), args.name)
            print(f"token {args.name} removed from {path}; `maintctl reload` makes the daemon forget it")
        else:
            for entry in tokens.list_tokens(Path(path)):
                print(f"{entry.name}\t{entry.role}")
    except tokens.TokenError as exc:
        print(render.terminal(f"maintctl: {exc}"), file=sys.stderr)
        return EXIT_REFUSED
    return EXIT_OK


COMMANDS = {
    "pipelines": cmd_pipelines,
    "trigger": cmd_trigger,
    "runs": cmd_runs,
    "agents": cmd_agents,
    "agent": cmd_agent,
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
    "forget": cmd_forget,
    "window": cmd_window,
    "deadline-preview": cmd_deadline_preview,
    "why": cmd_why,
}

if __name__ == "__main__":
    sys.exit(main())
