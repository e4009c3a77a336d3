"""``maintd-agent``: a Celery worker that runs maintd's jobs on this host (issue 12).

It consumes only its own queue (:func:`remote.contract.worker_queue`), as the Celery node
``NAME@<short host name>``, with a prefork pool of ``--slots`` processes (each runs one job
at a time: a slot is an agent), events on, a prefetch of one, and neither gossip nor mingle
(maintd talks to each worker on its own). The job task is :mod:`remote.task`.

SIGTERM is Celery's warm shutdown: the worker takes no more jobs and exits once the running
ones have ended with their real results (SIGQUIT, or a second SIGINT, is the cold one). The
broker's password is read from ``--broker-password-file`` or ``MAINTD_BROKER_PASSWORD`` and
put into the URL; it is never logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote, urlsplit, urlunsplit

from remote.contract import DEFAULT_QUEUE, make_app, node_name, worker_queue

__all__ = ["main"]

log = logging.getLogger("maintd.agent")

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
SCHEMES = ("redis", "rediss")
#: bits always cleared from the mode of what the agent and its jobs create (as maintd's UMASK)
UMASK = 0o027
EXIT_USAGE = 2


class Usage(Exception):
    """A bad option: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def short_host() -> str:
    return socket.gethostname().split(".", 1)[0]


def default_work_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/maintd-agent")
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "maintd-agent"


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="maintd-agent",
        description=(
            "Run maintd's jobs on this host: a Celery worker on a Redis broker that takes jobs only from "
            "its own queue (QUEUE.NAME), at most SLOTS at a time."
        ),
        epilog=(
            "Environment: MAINTD_BROKER (the broker URL when --broker is not given), MAINTD_BROKER_PASSWORD\n"
            "(the broker's password when --broker-password-file is not given).\n"
            "SIGTERM is a warm shutdown: no more jobs are taken, the running ones finish first.\n"
            "Exit codes: 0 stopped cleanly, 1 could not start or failed, 2 bad arguments."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--broker",
        metavar="URL",
        help=f"redis:// or rediss:// URL of the broker (default: $MAINTD_BROKER, else {DEFAULT_BROKER})",
    )
    p.add_argument("--broker-password-file", metavar="FILE", type=Path, help="read the broker's password from FILE")
    p.add_argument("--queue", default=DEFAULT_QUEUE, help="the queue prefix maintd publishes to (default: %(default)s)")
    p.add_argument(
        "--slots", type=positive_int, default=os.cpu_count() or 1, help="jobs run at once (default: %(default)s, the CPUs)"
    )
    p.add_argument("--name", type=agent_name, help="this agent's name (default: the short host name)")
    p.add_argument("--work-dir", type=Path, help=f"workspaces and logs of the jobs (default: {default_work_dir()})")
    p.add_argument(
        "--heartbeat",
        type=positive_float,
        default=2.0,
        metavar="SECONDS",
        help="how often the worker sends its heartbeat event; maintd counts it lost after its lost_timeout without one"
        " (default: %(default)s)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info", help="(default: %(default)s)")
    return p


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0: {text!r}")
    return value


def agent_name(text: str) -> str:
    if not NAME_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a name of letters, digits, '_', '.' and '-'")
    return text


def with_password(url: str, password: str | None) -> str:
    """``url`` with ``password`` put in (replacing one it had)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise Usage(f"--broker: {mask(url)!r} is not a redis:// or rediss:// URL with a host")
    if password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def mask(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``: for the log."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "<a broker URL that cannot be read>"
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))


def broker_url(args: argparse.Namespace) -> str:
    password = os.environ.get("MAINTD_BROKER_PASSWORD") or None
    if args.broker_password_file is not None:
        try:
            password = args.broker_password_file.read_text().strip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise Usage(f"--broker-password-file: cannot read {args.broker_password_file}: {exc}") from None
        if not password:
            raise Usage(f"--broker-password-file: {args.broker_password_file} is empty")
    return with_password(args.broker or os.environ.get("MAINTD_BROKER") or DEFAULT_BROKER, password)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    name = args.name or short_host()
    try:
        agent_name(name)
        url = broker_url(args)
        agent_name(args.queue)
    except (Usage, argparse.ArgumentTypeError) as exc:
        text = str(exc) if isinstance(exc, Usage) else f"--name or --queue: {exc}"
        print(f"maintd-agent: {text}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
    )
    os.umask(os.umask(UMASK) | UMASK)
    work_dir = (args.work_dir or default_work_dir()).absolute()
    try:
        work_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        print(f"maintd-agent: cannot make the work dir {work_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    from remote.task import register

    app = make_app(url)
    # A worker with a busy slot would take (reserve) one more message, prefetch of one or
    # not, since a task is acknowledged as it starts: it then runs after a cancel_consumer.
    # With this (Celery >= 5.6, Redis only) it takes a message only for an idle slot.
    app.conf.worker_disable_prefetch = True  # type: ignore[attr-defined]
    # Redis down for long: keep trying (Celery's default gives up after 100 tries and the
    # worker exits), so the running jobs are not cut off; nothing is lost when it returns.
    app.conf.broker_connection_max_retries = None  # type: ignore[attr-defined]
    register(app, str(work_dir))
    node = node_name(name, short_host())
    queue = worker_queue(args.queue, name)
    log.info(
        "agent %s: broker %s, queue %s, %d slot%s, work dir %s",
        node,
        mask(url),
        queue,
        args.slots,
        "s" if args.slots != 1 else "",
        work_dir,
    )
    worker = app.Worker(  # type: ignore[attr-defined]
        hostname=node,
        pool="prefork",
        concurrency=args.slots,
        queues=[queue],
        loglevel=args.log_level.upper(),
        task_events=True,
        prefetch_multiplier=1,
        without_gossip=True,
        without_mingle=True,
        heartbeat_interval=args.heartbeat,
        redirect_stdouts=False,
        quiet=True,
    )
    worker.start()
    return int(worker.exitcode or 0)


if __name__ == "__main__":
    sys.exit(main())
