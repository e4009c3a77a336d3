"""``maintctl window --reason R [--deadline D] -- COMMAND...``: a maintenance window in one step.

1. ``enable`` (audited by the daemon as any enable), keeping the drain id it answers;
2. wait until it is safe to restart, saying each change (:func:`maintctl.progress.wait_until_safe`;
   across a restart of maintd); past ``--timeout``: exit 4, maintenance left on, and said so;
3. run COMMAND (an upgrade, a backup), audited before (``window_command_started``) and after
   (``window_command_ended``, with its exit code) through the ``window`` request;
4. COMMAND succeeded: ``disable``, but only the drain this window turned on: if maintd was
   restarted meanwhile (maintenance is off) or someone turned it off and on again (another
   drain id), that is said and left as it is. COMMAND failed: maintenance stays on, that is
   said, and maintctl exits with COMMAND's code.

The daemon audits ``enable`` and ``disable`` itself; each request carries this process's pid
and command line (``SO_PEERCRED``), so ``maintctl history`` shows the whole window.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from . import render
from .client import Client, DaemonError, Unreachable
from .follow import Subscription
from .progress import wait_until_safe

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

EXIT_NOT_SAFE = 4
#: The shell's codes for a command that cannot be run.
NOT_FOUND, NOT_EXECUTABLE = 127, 126


def run(client: Client, args: argparse.Namespace, as_json: bool) -> int:
    command = shlex.join(args.argv)
    talk = not args.quiet

    def say(line: str) -> None:
        if talk:
            print(render.terminal(line), flush=True)

    info = client.request(
        "enable",
        reason=args.reason,
        deadline_seconds=args.deadline,
        on_deadline="cancel" if args.cancel_at_deadline else None,
    )
    drain_id = info["drain_id"]
    say(f"maintenance mode on ({drain_id}); waiting until it is safe to run: {command}")
    watch = Subscription(client, say=say)
    try:
        safe, status = wait_until_safe(watch, args.timeout, say if talk else None)
    finally:
        watch.close()
    if not safe:
        print(
            render.terminal(
                f"maintctl: not safe to restart when the timeout passed ({render.progress(status)}): {command} was not run; "
                "maintenance mode stays ON (`maintctl disable` turns it off)"
            ),
            file=sys.stderr,
        )
        return EXIT_NOT_SAFE
    say(f"safe to restart; running: {command}")
    step(client.path, "command_started", command, drain_id)
    code = execute(args.argv)
    step(client.path, "command_ended", command, drain_id, exit_code=code)
    if code != 0:
        print(
            render.terminal(
                f"maintctl: {command} failed (exit code {code}): maintenance mode stays ON ({drain_id}); "
                "see to it, then `maintctl disable`"
            ),
            file=sys.stderr,
        )
        return code
    return close_window(client.path, drain_id, command)


def execute(argv: list[str]) -> int:
    """COMMAND's exit code as a shell gives it (128+N for a signal, 127 not found, 126 not runnable)."""
    try:
        code = subprocess.run(argv, check=False).returncode
    except FileNotFoundError:
        print(f"maintctl: {render.terminal(argv[0])}: command not found", file=sys.stderr)
        return NOT_FOUND
    except PermissionError:
        print(f"maintctl: {render.terminal(argv[0])}: permission denied", file=sys.stderr)
        return NOT_EXECUTABLE
    return 128 - code if code < 0 else code


def step(path: str, name: str, command: str, drain_id: str, exit_code: int | None = None) -> None:
    """Audit a step, on a connection of its own (COMMAND may have restarted maintd). A daemon
    that cannot be reached does not stop the window: it is said, and the window goes on."""
    try:
        with Client(path) as client:
            client.request("window", step=name, command=command[:4096], drain_id=drain_id, exit_code=exit_code)
    except (Unreachable, DaemonError) as exc:
        print(render.terminal(f"maintctl: could not record {name.replace('_', ' ')} in the audit log: {exc}"), file=sys.stderr)


def close_window(path: str, drain_id: str, command: str) -> int:
    """Turn maintenance off if it is still the drain this window turned on."""
    with Client(path) as client:
        m = client.request("status")["maintenance"]
        if not m["enabled"]:
            print(render.terminal(f"{command} succeeded; maintenance mode is already off (maintd was restarted?)"))
            return 0
        if m["drain_id"] != drain_id:
            print(
                render.terminal(
                    f"{command} succeeded, but maintenance mode was turned on again meanwhile ({m['drain_id']}, by "
                    f"{m['updated_by']}): left ON"
                )
            )
            return 0
        try:  # compare-and-set: never another operator's maintenance, whatever happened since the look above
            client.request("disable", reason=f"maintctl window: {command} succeeded"[:4096], if_drain_id=drain_id)
        except DaemonError as exc:
            if exc.code != "conflict":
                raise
            print(render.terminal(f"{command} succeeded, but maintenance mode changed meanwhile ({exc.message}): left as it is"))
            return 0
    print(render.terminal(f"{command} succeeded; maintenance mode: off ({drain_id}); every subsystem resumes its intake"))
    return 0
