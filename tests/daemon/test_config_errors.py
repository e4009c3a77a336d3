"""Config errors as an operator needs them: every error of a file at once, each in words
with its key path, never a regular expression; and a warning when the admin group named
in the config does not exist (issue 13)."""

from __future__ import annotations

import getpass
import grp
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from actors.decode import Invalid, convert, decode_toml, patterns_without_words
from actors.definitions import PipelineFile
from daemon import config as config_mod
from daemon.auth import admin_group_problem
from daemon.config import Config, ConfigError
from tests.conftest import ROOT, wait_for

MANY = """\
[daemon]
log_level = "loud"
[control]
mode = "999"
colour = "blue"
[agents]
count = -1
cancel_grace = "5x"
process_tracking = "magic"
[[materials]]
url = ""
[[pipelines]]
name = "a b"
[[pipelines.stages]]
name = "s"
[[pipelines.stages.jobs]]
name = "j/"
command = []
"""

#: Each error of MANY, by its key path, and words it must say.
EXPECTED = {
    "$.daemon.log_level": "expected one of 'debug', 'info', 'warning', 'error', got 'loud'",
    "$.control.mode": "expected an octal file mode such as \"0660\", got '999'",
    "$.control": "unknown key 'colour'",
    "$.agents.count": "expected an integer >= 0, got -1",
    "$.agents.cancel_grace": "expected a duration such as 250ms, 30s, 5m, 2h or 1d, got '5x'",
    "$.agents.process_tracking": "expected one of 'auto', 'cgroup', 'subreaper', got 'magic'",
    "$.materials[0]": "the key 'name' is required",
    "$.materials[0].url": "expected a string of length >= 1, got ''",
    "$.pipelines[0].name": "expected a name of 1 to 63 letters, digits, '_', '.' or '-' that starts with a letter or digit",
    "$.pipelines[0].stages[0].jobs[0].name": "got 'j/'",
    "$.pipelines[0].stages[0].jobs[0].command": "expected an array of length >= 1",
}


def test_every_error_of_a_file_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "maintd.toml"
    path.write_text(MANY)
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path)
    lines = caught.value.lines
    by_path = {line.rpartition(" - at `")[2].rstrip("`"): line for line in lines}
    assert set(by_path) == set(EXPECTED), lines
    for where, words in EXPECTED.items():
        assert words in by_path[where], (where, by_path[where])
        assert by_path[where].startswith(f"{path}: ")
    # For a reload's answer: all of them on one line (bounded, as every one-line message is).
    assert "\n" not in str(caught.value) and lines[0].partition(": ")[2] in str(caught.value)
    assert "; " + lines[1].partition(": ")[2] in str(caught.value)


def test_no_error_shows_a_regular_expression() -> None:
    """Every pattern a config or pipeline file is checked against has its words."""
    assert patterns_without_words(Config) == []
    assert patterns_without_words(PipelineFile) == []
    bad = {"control": {"mode": "x"}, "http": {"listen": "nowhere"}, "materials": [{"name": "-x", "url": "u", "branch": ".."}]}
    with pytest.raises(Invalid) as caught:
        convert(bad, Config)
    assert len(caught.value.errors) == 4, caught.value.errors
    for error in caught.value.errors:
        assert not re.search(r"regex|\\Z|\[A-Za-z|\^", error), error


def test_a_valid_file_decodes_as_msgspec_decodes_it() -> None:
    text = (ROOT / "config" / "maintd.toml").read_bytes()
    assert decode_toml(text, Config) == msgspec.toml.decode(text, type=Config)


def test_types_that_are_wrong_are_said_in_toml_words() -> None:
    with pytest.raises(Invalid) as caught:
        convert({"agents": {"count": "x"}, "control": {"mode": [1]}, "maintenance": 3}, Config)
    assert sorted(caught.value.errors) == [
        "expected a string, got an array - at `$.control.mode`",
        "expected a table, got an integer - at `$.maintenance`",
        "expected an integer, got a string - at `$.agents.count`",
    ]


def test_maintd_prints_each_error_on_its_own_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "maintd.toml"
    path.write_text(MANY)
    cmd = [sys.executable, "-m", "daemon", "--config", str(path), "--socket", str(tmp_path / "run" / "s.sock")]
    done = subprocess.run(
        [*cmd, "--state-dir", str(tmp_path / "state"), "--http", "off"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == len(EXPECTED) and all(line.startswith(f"maintd: {path}: ") for line in lines), done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "state").exists()


def test_a_missing_admin_group_is_warned_of_at_start_up(tmp_path: Path) -> None:
    missing = "maintd-no-such-group"
    with pytest.raises(KeyError):
        grp.getgrnam(missing)
    assert admin_group_problem(missing) is not None and f"groupadd {missing}" in admin_group_problem(missing)
    assert admin_group_problem(grp.getgrgid(0).gr_name) is None
    assert admin_group_problem(None) is None and admin_group_problem("") is None
    me = getpass.getuser()
    assert (me == "root") or f"root and {me}" in admin_group_problem(missing)


def test_the_daemon_logs_the_missing_group(make_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    d = make_daemon(config='[control]\nadmin_group = "maintd-no-such-group"\n')
    said = "admin group 'maintd-no-such-group' ([control] admin_group) does not exist"
    wait_for(lambda: said in d.log_text(), 10, "the warning, once the daemon is ready")
    log = d.log_text()
    assert log.index(" ready: control socket ") < log.index(said)


CELERY = """\
[agents]
backend = "celery"
[celery]
broker = "redis://maintd:hunter2@redis.internal:6379/0"
queue = "a queue"
heartbeat = "5s"
lost_timeout = "2s"
"""


def test_the_celery_table_s_errors_each_name_its_key_and_a_password_in_the_url_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "maintd.toml"
    path.write_text(CELERY)
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path)
    text = "\n".join(caught.value.lines)
    assert "`$.celery.queue`" in text
    path.write_text(CELERY.replace('queue = "a queue"\n', ""))
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path)
    lines = caught.value.lines
    assert any("cannot hold a user or password" in line and "`$.celery.broker`" in line for line in lines)
    assert any("lost_timeout must be longer than heartbeat" in line for line in lines)
    assert all("hunter2" not in line for line in lines)  # the error does not repeat the password
    path.write_text(CELERY.replace("redis://maintd:hunter2@", "http://"))
    with pytest.raises(ConfigError) as caught:
        config_mod.load(path)
    assert any("redis:// or rediss://" in line for line in caught.value.lines)


def test_the_celery_password_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "maintd.toml"
    path.write_text('[agents]\nbackend = "celery"\n[celery]\npassword_file = "secret"\n')
    assert config_mod.load(path).celery.password_file == str(tmp_path / "secret")


def test_maintd_says_in_one_line_that_the_broker_s_password_file_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "maintd.toml"
    path.write_text('[agents]\nbackend = "celery"\n[celery]\npassword_file = "missing"\n')
    command = [sys.executable, "-m", "daemon", "--config", str(path), "--state-dir", str(tmp_path / "s")]
    done = subprocess.run([*command, "--socket", str(tmp_path / "c.sock")], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "cannot read the broker's password file" in done.stderr and "Traceback" not in done.stderr
