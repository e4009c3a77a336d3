"""maintctl's command line: every command and option explained, the exit codes as the README
says, and the deadlines people write (``30m``, ``1h30m``, ``02:00``, ``2026-12-01T02:00Z``)."""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maintctl import when
from maintctl.arguments import SUBCOMMANDS, build_parser
from maintctl.cli import EXIT_REFUSED, EXIT_USAGE
from tests.conftest import ROOT, Daemon


def subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_command_has_a_description_and_every_option_a_help() -> None:
    parser = build_parser()
    commands = dict(subparsers(parser))
    assert set(commands) == set(SUBCOMMANDS)
    missing = [f"maintctl {name}: no description" for name, sub in commands.items() if not sub.description]
    for name, sub in [("maintctl", parser), *commands.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
    assert missing == []


def maintctl(*args: str, socket: str = "/nonexistent/maintd.sock") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maintctl", "--socket", socket, *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    "args",
    [
        ["logs", "--bytes", "0", "1"],
        ["logs", "--bytes", "-5", "1"],
        ["logs", "0"],
        ["runs", "--limit", "0"],
        ["runs", "--limit", "1001"],
        ["enable", "--deadline", "0"],
        ["enable", "--deadline", "0s"],
    ],
)
def test_bad_arguments_are_exit_2_before_the_daemon_is_asked(args: list[str]) -> None:
    """No daemon listens: an answer of 2 (not 3) shows the arguments were refused first."""
    done = maintctl(*args)
    assert done.returncode == EXIT_USAGE, done
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith("maintctl ")


def test_a_deadline_of_zero_says_why() -> None:
    done = maintctl("enable", "--deadline", "0")
    assert "a deadline of zero would make the drain overdue at once" in done.stderr


def test_maintd_http_banana_is_a_usage_error(tmp_path: Path) -> None:
    socket, state = str(tmp_path / "s.sock"), str(tmp_path / "st")
    done = subprocess.run(
        [sys.executable, "-m", "daemon", "--socket", socket, "--state-dir", state, "--http", "banana"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done
    assert "--http" in done.stderr and "banana" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "st").exists()  # refused before anything was made


def test_runs_of_a_pipeline_that_does_not_exist_is_not_found(daemon: Daemon) -> None:
    done = daemon.maintctl("runs", "--pipeline", "nosuch")
    assert done.returncode == EXIT_REFUSED, done
    assert "not_found" in done.stderr and "nosuch" in done.stderr


@pytest.fixture
def paris(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_durations_and_times(paris: None) -> None:
    now = dt.datetime(2026, 11, 30, 21, 15, tzinfo=dt.UTC).timestamp()  # 22:15 in Paris
    assert when.seconds_to("30m", now) == 1800
    assert when.seconds_to("1h30m", now) == 5400
    assert when.seconds_to("1d2h3m4s", now) == 86400 + 7200 + 180 + 4
    assert when.seconds_to("90", now) == 90
    assert when.seconds_to("23:00", now) == 45 * 60  # later today, local time
    assert when.seconds_to("02:00", now) == 3 * 3600 + 45 * 60  # the next 02:00: tomorrow
    assert when.seconds_to("22:15", now) == 86400  # now is not next
    assert when.seconds_to("2026-12-01T02:00Z", now) == 4 * 3600 + 45 * 60
    assert when.seconds_to("2026-12-01T02:00", now) == 3 * 3600 + 45 * 60  # no zone: local
    for bad, why in [
        ("2026-11-30T20:00Z", "already passed"),
        ("1h30", "not a duration"),
        ("25:00", "not a duration"),
        ("2026-13-01T02:00Z", "not a date and time"),
        ("2028-01-01T00:00Z", "at most 366d"),
    ]:
        with pytest.raises(when.BadTime, match=why):
            when.seconds_to(bad, now)


def test_a_deadline_as_a_time_reaches_the_daemon(daemon: Daemon) -> None:
    at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    done = daemon.maintctl("enable", "--deadline", at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert done.returncode == 0, done
    deadline = daemon.status()["maintenance"]["deadline"]
    assert abs(deadline - int(at.timestamp())) < 5
    combined = daemon.maintctl("disable").returncode, daemon.maintctl("enable", "--deadline", "1h30m")
    assert combined[0] == 0 and combined[1].returncode == 0
    assert abs(daemon.status()["maintenance"]["deadline"] - (time.time() + 5400)) < 10


def test_utc_shows_every_time_in_utc(daemon: Daemon) -> None:
    assert daemon.maintctl("enable", "--deadline", "30m").returncode == 0
    local = daemon.maintctl("status", env={"TZ": "Asia/Tokyo"})
    assert " JST" in local.stdout and " UTC" not in local.stdout
    utc = daemon.maintctl("--utc", "status", env={"TZ": "Asia/Tokyo"})
    assert utc.returncode == 0
    assert " UTC" in utc.stdout and "JST" not in utc.stdout
