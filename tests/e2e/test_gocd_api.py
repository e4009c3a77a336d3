"""GoCD's maintenance-mode API, replayed against a real daemon with bearer tokens.

The requests and answers are GoCD's own:

- api.go.cd, source/includes/maintenance-mode/_50-enable.md.erb, _60-disable.md.erb and
  _70-info.md.erb: ``curl .../go/api/admin/maintenance_mode/enable -X POST -H 'X-GoCD-Confirm:
  true' -H 'Accept: application/vnd.go.cd.v1+json'`` -> ``HTTP/1.1 204 No Content``,
  ``Content-Type: application/vnd.go.cd.v1+json; charset=utf-8``; the info's ``_links.self``
  absolute (``https://ci.example.com/go/api/admin/maintenance_mode/info``) and ``updated_on``
  as ``2019-01-02T04:18:28Z``;
- gocd/gocd, api/api-server-maintenance-mode-v1/.../ServerMaintenanceModeControllerV1Test.groovy:
  409 with "Failed to enable server maintenance mode. Server is already in maintenance mode."
  and "Failed to disable server maintenance mode. Server is not in maintenance mode.";
- gocd/gocd, server/.../newsecurity/filters/ModeAwareFilterTest.java: a POST while in
  maintenance -> 503 ``{"message": "Server is in maintenance mode, please try later."}``;
- gocd/gocd, server/.../filters/AccessTokenAuthenticationFilter.java ("Invalid Personal Access
  Token."), VerifyAuthorityFilter.java ("You are not authenticated!"), api-base
  HaltApiMessages.java ("You are not authorized to perform this action.", the
  X-GoCD-Confirm message).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon import gocd_api
from tests.conftest import ROOT, Daemon, wait_for

CONFIG = '[http]\ntokens_file = "tokens"\n'
GOCD = "/go/api/admin/maintenance_mode"
V1 = "application/vnd.go.cd.v1+json"
CONTENT_TYPE = "application/vnd.go.cd.v1+json; charset=utf-8"
GOCD_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")  # GoCD's jsonDate: UTC, no milliseconds


def add_token(d: Daemon, name: str, *extra: str) -> str:
    """``maintctl token add`` as an operator runs it (the daemon need not be running)."""
    r = d.maintctl("token", "add", name, "--config", str(d.tmp / "maintd.toml"), *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def make(make_daemon: Any, *names: tuple[str, ...], config: str = CONFIG) -> tuple[Daemon, dict[str, str]]:
    d = make_daemon(config=config, start=False)
    tokens = {name: add_token(d, name, *extra) for name, *extra in names}
    return d.start(), tokens


def call(d: Daemon, method: str, path: str, token: str | None = None, **headers: str) -> httpx.Response:
    sent = {"Accept": V1, **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return httpx.request(method, d.http_url() + path, headers=sent, timeout=30)


def change(d: Daemon, what: str, token: str | None) -> httpx.Response:
    return call(d, "POST", f"{GOCD}/{what}", token, **{"X-GoCD-Confirm": "true"})


def history(d: Daemon) -> list[dict[str, Any]]:
    c = d.client()
    return c.request("history")["result"]["entries"]


def test_gocd_requests_and_answers(make_daemon: Any) -> None:
    d, tokens = make(make_daemon, ("ci",), ("monitor", "--read-only"))
    ci, monitor = tokens["ci"], tokens["monitor"]
    base = d.http_url()

    # the tokens file holds names and salted hashes, never a token; only its owner reads it
    text = (d.tmp / "tokens").read_text()
    assert ci.partition(".")[2] not in text and monitor.partition(".")[2] not in text
    assert re.fullmatch(r"ci scrypt\$[\w-]+\$[\w-]+ admin\nmonitor scrypt\$[\w-]+\$[\w-]+ read\n", text)
    assert os.stat(d.tmp / "tokens").st_mode & 0o777 == 0o600

    # 401: no token, a wrong one, a right name with a wrong secret; on both info paths
    for path in (f"{GOCD}/info", "/api/maintenance_mode/info"):
        r = call(d, "GET", path)
        assert (r.status_code, r.json()) == (401, {"message": "You are not authenticated!"}), path
        assert r.headers["www-authenticate"].startswith("Bearer")
    for wrong in ("nonsense", "ci.AAAA", ci[:-1], monitor.replace("monitor.", "ci.")):
        r = call(d, "GET", f"{GOCD}/info", wrong)
        assert (r.status_code, r.json()) == (401, {"message": "Invalid Personal Access Token."}), wrong
        assert change(d, "enable", wrong).status_code == 401
    # the status page and the metrics stay open
    assert httpx.get(base + "/", timeout=30).status_code == 200
    assert httpx.get(base + "/metrics", timeout=30).status_code == 200

    # info (_70-info.md.erb), with a read-only token too
    r = call(d, "GET", f"{GOCD}/info", monitor)
    assert r.status_code == 200 and r.headers["content-type"] == CONTENT_TYPE
    info = r.json()
    assert info["_links"] == {
        "self": {"href": f"{base}{GOCD}/info"},
        "doc": {"href": "https://api.gocd.org/current/#maintenance-mode-info"},
    }
    assert info["is_maintenance_mode"] is False and "attributes" not in info

    # 403: a token without the admin role; audited as the socket's refusals are
    r = change(d, "enable", monitor)
    assert (r.status_code, r.json()) == (403, {"message": "You are not authorized to perform this action."})
    assert r.headers["content-type"] == CONTENT_TYPE
    (refused,) = [e for e in history(d) if e["action"] == "forbidden"]
    assert refused["by"] == "monitor" and refused["item"] == "enable"
    assert re.search(r"http token monitor from 127\.0\.0\.1 port \d+", refused["detail"])

    # 400: GoCD wants X-GoCD-Confirm on a POST without a JSON body
    r = call(d, "POST", f"{GOCD}/enable", ci)
    assert (r.status_code, r.json()) == (400, {"message": "Missing required header 'X-GoCD-Confirm' with value 'true'"})
    assert d.status()["maintenance"]["enabled"] is False

    # 204 (_50-enable.md.erb); the token's name is updated_by and in the audit log
    r = change(d, "enable", ci)
    assert (r.status_code, r.content, r.headers["content-type"]) == (204, b"", CONTENT_TYPE)
    assert "content-length" not in r.headers
    m = d.status()["maintenance"]
    assert (m["enabled"], m["updated_by"]) == (True, "ci")
    (enabled,) = [e for e in history(d) if e["action"] == "enable"]
    assert enabled["by"] == "ci" and re.search(r"http token ci from 127\.0\.0\.1 port \d+", enabled["detail"])
    info = call(d, "GET", f"{GOCD}/info", ci).json()
    assert info["is_maintenance_mode"] is True and info["metadata"]["updated_by"] == "ci"
    assert GOCD_TIME.match(info["metadata"]["updated_on"]), info["metadata"]
    assert set(info["attributes"]["running_systems"]) >= {"material_update_in_progress", "building_jobs", "scheduled_jobs"}

    # 409 with GoCD's message
    r = change(d, "enable", ci)
    assert (r.status_code, r.json()) == (409, {"message": gocd_api.ALREADY_ON})
    assert r.json()["message"] == "Failed to enable server maintenance mode. Server is already in maintenance mode."

    # 503 for anything else that would change something (ModeAwareFilterTest), JSON or the page
    r = httpx.post(base + "/api/users", headers={"Content-Type": "application/json"}, content=b"{}", timeout=30)
    assert (r.status_code, r.json()) == (503, {"message": "Server is in maintenance mode, please try later."})
    r = httpx.delete(base + "/", timeout=30)
    assert r.status_code == 503 and "please try later" in r.text and r.headers["content-type"].startswith("text/html")

    # disable is still allowed: 204 (_60-disable.md.erb), then 409
    r = change(d, "disable", ci)
    assert r.status_code == 204, r.text
    assert d.status()["maintenance"]["enabled"] is False
    r = change(d, "disable", ci)
    assert (r.status_code, r.json()) == (409, {"message": gocd_api.ALREADY_OFF})
    assert r.json()["message"] == "Failed to disable server maintenance mode. Server is not in maintenance mode."
    # out of maintenance, other changes are 405 again (a read-only server)
    assert httpx.post(base + "/api/users", headers={"Accept": "application/json"}, timeout=30).status_code == 405


def test_the_self_link_follows_the_host_or_the_public_url(make_daemon: Any) -> None:
    d, tokens = make(make_daemon, ("ci",))
    port = d.http_url().rpartition(":")[2]
    r = call(d, "GET", f"{GOCD}/info", tokens["ci"], Host=f"localhost:{port}")
    assert r.json()["_links"]["self"]["href"] == f"http://localhost:{port}{GOCD}/info"
    d, tokens = make(make_daemon, ("ci",), config=CONFIG + 'public_url = "https://ci.example.com/"\n')
    r = call(d, "GET", f"{GOCD}/info", tokens["ci"])
    assert r.json()["_links"]["self"]["href"] == f"https://ci.example.com{GOCD}/info"


def test_without_tokens_the_api_changes_nothing(make_daemon: Any) -> None:
    d = make_daemon()
    r = call(d, "GET", f"{GOCD}/info")
    assert r.status_code == 200 and r.json()["is_maintenance_mode"] is False
    assert httpx.get(d.http_url() + "/api/maintenance_mode/info", timeout=30).status_code == 200
    r = change(d, "enable", None)
    assert r.status_code == 404 and "tokens_file" in r.json()["message"]
    assert change(d, "enable", "ci.whatever").status_code == 404
    assert d.status()["maintenance"]["enabled"] is False


def test_reload_reads_the_tokens_file_again(make_daemon: Any) -> None:
    d, tokens = make(make_daemon, ("ci",))
    late = add_token(d, "late")
    assert call(d, "GET", f"{GOCD}/info", late).status_code == 401  # not read yet
    r = d.maintctl("reload")
    assert r.returncode == 0, r.stderr
    assert call(d, "GET", f"{GOCD}/info", late).status_code == 200

    # a bad file: the reload is refused, in one line naming the line, and nothing changes
    path = d.tmp / "tokens"
    good = path.read_text()
    path.write_text(good + "broken-line-without-hash\n")
    r = d.maintctl("reload")
    assert r.returncode == 1
    assert f"{path}:3: expected NAME HASH [ROLE], got 1 field(s)" in r.stderr and len(r.stderr.splitlines()) == 1
    assert call(d, "GET", f"{GOCD}/info", late).status_code == 200
    path.unlink()
    r = d.maintctl("reload")
    assert r.returncode == 1 and "cannot read the tokens file" in r.stderr
    assert call(d, "GET", f"{GOCD}/info", tokens["ci"]).status_code == 200
    # SIGHUP reads it too
    path.write_text(good.replace("late ", "later "))
    d.proc.send_signal(1)  # type: ignore[union-attr]

    def later_known() -> bool:
        return call(d, "GET", f"{GOCD}/info", late.replace("late.", "later.")).status_code == 200

    wait_for(later_known, 15, "SIGHUP to read the tokens file")
    assert call(d, "GET", f"{GOCD}/info", late).status_code == 401


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read the tokens file ([http] tokens_file): No such file or directory"),
        ("dir", "cannot read the tokens file ([http] tokens_file): Is a directory"),
        ("ci scrypt$AAAA$BBBB admin\n", ":1: the hash of token 'ci' is not scrypt$SALT$DIGEST"),
        (
            "ci scrypt$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA root\n",
            ":1: the role is 'admin' or 'read'",
        ),
        ("ci a b c\n", ":1: expected NAME HASH [ROLE], got 4 field(s)"),
    ],
)
def test_a_bad_tokens_file_stops_the_start_with_one_line(tmp_path: Path, content: str | None, expected: str) -> None:
    config = tmp_path / "maintd.toml"
    config.write_text(CONFIG)
    tokens = tmp_path / "tokens"
    if content == "dir":
        tokens.mkdir()
    elif content is not None:
        tokens.write_text(content)
    r = subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(config), "--socket", str(tmp_path / "s"), "--state-dir",
         str(tmp_path / "state"), "--http", "127.0.0.1:0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.startswith(f"maintd: {tokens}") and expected in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


def test_tokens_on_a_non_loopback_address_are_warned_about(make_daemon: Any) -> None:
    d = make_daemon(config=CONFIG, start=False)
    add_token(d, "ci")
    d.cmd[d.cmd.index("--http") + 1] = "0.0.0.0:0"
    d.start()
    wait_for(lambda: "not a loopback address: never without TLS in front" in d.log_text(), 10, "the warning")
