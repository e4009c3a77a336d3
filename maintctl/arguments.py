"""maintctl's command line: every command, its options and their help, the types that read
deadlines, durations and sizes, and :func:`parse_plain`, which reads a command with no options
of its own without importing argparse (what ``maintctl status`` must not pay for). The commands
themselves are in :mod:`maintctl.cli`.
"""

from __future__ import annotations

from types import SimpleNamespace

TYPE_CHECKING = False
if TYPE_CHECKING:  # argparse is imported only for the command lines parse_plain leaves to it
    import argparse
    from collections.abc import Callable


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


def _agent(p: argparse.ArgumentParser) -> None:
    p.description = (
        "One agent's drain. disable: the agent finishes its job and takes no more, without maintenance "
        "mode (allowed in maintenance too); enable: it takes work again (refused during maintenance)."
    )
    p.add_argument("action", choices=("disable", "enable"), help="disable: no new jobs on it; enable: jobs again")
    p.add_argument("name", metavar="NAME", help="the agent's name, as `maintctl agents` shows it")


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
    "agent": ("disable an agent (it finishes its job, takes no more) or enable it again", _agent),
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
