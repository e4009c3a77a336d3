"""``maintctl``: put maintd into maintenance mode, watch the drain, ask if it is safe to restart.

Kept lean, because a process start is most of what ``maintctl status`` costs: before its
first byte goes out it imports socket, json and the small stdlib-only modules of maintctl,
:mod:`daemon.paths` and :mod:`daemon.escape`; never msgspec, trio, pykka or the actors
(tests/maintctl/test_lean_start.py holds it to that). A command with no arguments of its
own (``status``, ``inflight``, ...) is read by :func:`parse_plain` without argparse; argparse
reads every other command line. Whatever else a command needs is imported where it is used.
"""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

from daemon.paths import default_socket

from . import render
from .client import Client, DaemonError, Unreachable

TYPE_CHECKING = False
if TYPE_CHECKING:  # argparse is imported only for the command lines parse_plain leaves to it
    import argparse
    from collections.abc import Callable

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
  4  not safe to restart (wait, window: the timeout passed before it was; why: something holds it)
  window: otherwise the command's own exit code (maintenance stays on if it is not 0)

a maintenance window:
  maintctl enable --reason "upgrade to 2.0" --deadline 30m
  maintctl wait --timeout 45m && systemctl restart my-job-server
  maintctl disable
or in one step:
  maintctl window --reason "upgrade to 2.0" --deadline 30m -- systemctl restart my-job-server

times are shown in the local time zone with its name; --utc shows them in UTC
"""


#: The longest --deadline or --timeout: the daemon's own bound on a drain deadline
#: (daemon/protocol.py), and far below what a socket timeout can hold.
MAX_DURATION_DAYS = 366


def duration(text: str) -> float:
    """A duration argument in seconds (``30m``, ``1h30m``), from zero to :data:`MAX_DURATION_DAYS` days.

    Any run of digits is a number, so ``100000000d`` (or 400 digits, which make ``inf``)
    would reach a socket timeout and raise OverflowError, or go to the daemon as JSON
    ``null``: refused here as a usage error (exit 2) that gives the bound.
    """
    import argparse

    from .when import BadTime
    from .when import duration as parse

    try:
        return parse(text)
    except BadTime as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def moment(text: str) -> float:
    """Seconds from now to a duration (``30m``) or a time (``02:00``, ``2026-12-01T02:00Z``)."""
    import argparse

    from .when import BadTime, seconds_to

    try:
        return seconds_to(text)
    except BadTime as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def deadline(text: str) -> float:
    """A drain deadline: as :func:`moment`, but never now (``0`` would be overdue at once)."""
    import argparse

    seconds = moment(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"{text.strip()!r}: a deadline of zero would make the drain overdue at once; give a duration (30m) or a time (02:00)"
        )
    return seconds


def log_bytes(text: str) -> int:
    """``logs --bytes``: a whole number from 1 to 16 MiB (what the daemon sends at most)."""
    import argparse

    if not text.strip().isdigit() or not 1 <= int(text) <= 16 << 20:
        raise argparse.ArgumentTypeError(
            f"{text.strip()!r} is not a number of bytes from 1 to {16 << 20} (use --all for the whole log)"
        )
    return int(text)


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argument type: a whole number from ``low`` to ``high`` (what the daemon takes), else exit 2."""

    def read(text: str) -> int:
        import argparse

        if not text.strip().isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text.strip()!r} is not a whole number from {low} to {high}")
        return int(text)

    return read


def _enable(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", help="why (shown in status and the history)")
    p.add_argument(
        "--deadline",
        type=deadline,
        metavar="WHEN",
        help="30m, 1h30m, 02:00 (the next) or 2026-12-01T02:00Z: mark the drain overdue then",
    )
    p.add_argument("--cancel-at-deadline", action="store_true", help="at the deadline, cancel every cancellable item")
    p.add_argument("--ttl", type=duration, metavar="DURATION", help="e.g. 4h: raise an alert if still on then")
    p.add_argument("--if-version", type=int, metavar="N", help="refuse (conflict) unless the version is still N")
    p.add_argument("--dry-run", action="store_true", help="change nothing: print what the deadline would do (needs --deadline)")


def _deadline_preview(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--deadline", type=deadline, metavar="WHEN", help="30m, 02:00, ... from now (default: the drain's own deadline)"
    )
    p.add_argument(
        "--cancel-at-deadline", action="store_true", default=None, help="as if it cancelled (default: the drain's own choice)"
    )


def _reason(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", help="why (kept in the history)")


def _disable(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", help="why (kept in the history)")
    p.add_argument("--if-drain-id", metavar="ID", help="refuse (conflict) unless drain ID is still the one on")


def _cancel(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="+", metavar="ITEM", help="item id as `maintctl inflight` shows it")
    p.add_argument("--reason", help="why (kept in the history)")


def _wait(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout", type=moment, metavar="WHEN", help="give up after this long (45m) or at this time (02:30); default: never"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="print only the last line, not each change")


def _watch(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--until", type=moment, metavar="WHEN", help="stop after this long (2h) or at this time (06:00); default: Ctrl-C"
    )


def _trigger(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline", help="the pipeline's name, as `maintctl pipelines` shows it")


def _runs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", help="only this pipeline's runs")
    p.add_argument("--limit", type=whole(1, 1000), default=10, help="show at most this many runs, newest first (default: 10)")


def _logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", type=whole(1, 2**62), help="the job's id, as `maintctl runs` shows it")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--bytes", type=log_bytes, default=65536, help="show at most this many bytes from the end (default: 65536)")
    size.add_argument("--all", action="store_true", help="show the whole log")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing what the job writes until it ends (Ctrl-C stops)")


def _pipeline(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("pause", "unpause"), help="pause: no new runs; unpause: runs again")
    p.add_argument("pipeline", help="the pipeline's name")


def _cancel_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="PIPELINE/COUNTER", help="the run, e.g. build/12")
    p.add_argument("--stage", help="cancel only this stage's jobs")


def _window(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="why (shown in status and the history)")
    p.add_argument("--deadline", type=deadline, metavar="WHEN", help="as for enable: 30m, 1h30m, 02:00 or 2026-12-01T02:00Z")
    p.add_argument("--cancel-at-deadline", action="store_true", help="at the deadline, cancel every cancellable item")
    p.add_argument("--timeout", type=moment, metavar="WHEN", help="give up (exit 4, maintenance left on) if not drained by then")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print each change while it drains")
    p.add_argument(
        "argv", nargs="+", metavar="COMMAND", help="after --: what to run once it is safe to restart, and its arguments"
    )


def _forget(p: argparse.ArgumentParser) -> None:
    p.add_argument("subsystem", help="the removed subsystem's name, as `maintctl status` shows it")


def _token(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Manage the tokens file that [http] tokens_file names (no daemon needed). `maintctl reload` "
        "(or SIGHUP) makes the daemon read it again."
    )
    p.add_argument("action", choices=("add", "list", "remove"), help="add prints the new token once")
    p.add_argument("name", nargs="?", metavar="NAME", help="the token's name (its updated_by, in the audit log)")
    p.add_argument("--read-only", action="store_true", help="add: a token that may read /info only (role read)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--tokens-file", metavar="PATH", help="the tokens file")
    where.add_argument("--config", metavar="PATH", help="the daemon's config file: its [http] tokens_file")


#: Each command: its help line and what adds its own arguments (None: only --socket and --json).
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None] | None]] = {
    "status": ("maintenance state, subsystems and what is running", None),
    "enable": ("turn maintenance mode on and start the drain", _enable),
    "disable": ("turn maintenance mode off; every subsystem resumes", _disable),
    "inflight": ("list the work in flight", None),
    "cancel": ("cancel in-flight items (never a material update)", _cancel),
    "watch": ("print every state and in-flight change as it happens, across restarts of maintd", _watch),
    "wait": ("wait until it is safe to restart (exit 0), or the timeout (exit 4)", _wait),
    "history": ("who turned maintenance on and off, and what was cancelled", None),
    "pipelines": ("the configured pipelines (config file and config repos)", None),
    "trigger": ("run a pipeline now (refused during maintenance)", _trigger),
    "runs": ("recent pipeline runs and their job results", _runs),
    "agents": ("the agents and what each is building", None),
    "logs": ("the output of a job (its id as `maintctl runs` shows it)", _logs),
    "pipeline": ("pause or unpause a pipeline (refused during maintenance)", _pipeline),
    "reload": ("re-read the config file's pipelines (refused during maintenance)", None),
    "cancel-run": ("cancel a run's (or a stage's) building and scheduled jobs", _cancel_run),
    "forget": ("clear a removed subsystem and its abandoned work from the status", _forget),
    "window": ("enable, wait, run COMMAND, then disable if it succeeded (else leave maintenance on)", _window),
    "deadline-preview": ("what the running drain's deadline (or --deadline) would do, from the ETAs", _deadline_preview),
    "why": ("what holds back safe to restart, and how to cancel it (exit 4: not safe)", None),
    "token": ("bearer tokens of GoCD's maintenance API over HTTP ([http] tokens_file; no daemon needed)", _token),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv``, with the sub-parsers of only the commands named in it.

    Each sub-parser is a whole ArgumentParser: building all of them is a fifth of what
    ``maintctl status`` costs. Every word of ``argv`` that names a command gets its
    sub-parser (the value of --socket may name one too, so all such words do); help, or
    no command named, builds them all, so that the list of commands and the "invalid
    choice" error show every command.
    """
    import argparse

    named = set(SUBCOMMANDS) if argv is None or "-h" in argv or "--help" in argv else set(SUBCOMMANDS).intersection(argv)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket", default=argparse.SUPPRESS, help="control socket (default: $MAINTD_SOCKET or the daemon's default)"
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the daemon's JSON result as it is")
    common.add_argument(
        "--utc", action="store_true", default=argparse.SUPPRESS, help="show times in UTC (default: local time with its zone)"
    )
    parser = argparse.ArgumentParser(
        prog="maintctl",
        description="Control maintd's maintenance mode.",
        parents=[common],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_, add_arguments) in SUBCOMMANDS.items():
        if name in named or not named:
            command = sub.add_parser(name, parents=[common], help=help_, description=help_[0].upper() + help_[1:] + ".")
            if add_arguments is not None:
                add_arguments(command)
    return parser


#: The commands with no arguments of their own: only --socket and --json.
PLAIN = frozenset(name for name, (_help, add_arguments) in SUBCOMMANDS.items() if add_arguments is None)


def parse_plain(argv: list[str]) -> SimpleNamespace | None:
    """``argv`` read without argparse when it is one of :data:`PLAIN` with at most ``--json``,
    ``--utc`` and one ``--socket PATH`` (or ``--socket=PATH``), in any order; None for anything else.

    Importing argparse and building its parser is a quarter of what ``maintctl status``
    costs. What this reads, argparse reads the same way (tests/maintctl/test_lean_start.py
    checks it over generated command lines); anything else (help, an abbreviation, a
    repeated option, a value that looks like an option) goes to argparse, which explains
    its errors.
    """
    command, fields = None, {}
    words = iter(argv)
    for word in words:
        if word in ("--json", "--utc"):
            fields[word[2:]] = True
        elif word == "--socket" or word.startswith("--socket="):
            value = word[len("--socket=") :] if word.startswith("--socket=") else next(words, None)
            if value is None or value.startswith("-") or "socket" in fields:
                return None
            fields["socket"] = value
        elif word in PLAIN and command is None:
            command = word
        else:
            return None
    return None if command is None else SimpleNamespace(command=command, **fields)


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
