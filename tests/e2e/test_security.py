"""Security, against the real daemon, real git repositories, real jobs and the real socket.

(a) Pipeline files from config repositories cannot name a path outside the workspaces: bad
    names are refused with a log line that says where, symlinks and crafted tree entries in
    the repository never reach the host's files, and a good pipeline runs inside
    STATE/workspaces.
(b) No request makes the daemon read or write outside its state directory: a job log
    swapped for a symlink, a FIFO or a hard link is refused ``forbidden``; path-like names in
    every request that takes a string create nothing; ``reload`` reads the configured file.
(c) Under a umask of 000 the socket keeps its mode, its folder is not world-writable, and
    the state directory, the database, workspaces and logs are neither group-writable nor
    open to others.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, Line, wait_for

GIT = "/usr/bin/git"

#: Names that would leave the folder they are joined to, or break a path or a log line.
BAD_NAMES = {
    "dotdot-escape": "../../escape",
    "slash": "a/b",
    "dotdot": "..",
    "dot": ".",
    "hidden": ".hidden",
    "absolute": "/tmp/maintd-escape-" + uuid.uuid4().hex,
    "nul": "nul\0escape",
    "newline": "new\nline",
    "trailing-newline": "escape\n",
    "empty": "",
    "backslash": "a\\b",
    "too-long": "x" * 64,
}


def git(cwd: Path, *args: str, input: bytes | None = None) -> str:
    result = subprocess.run(
        [GIT, "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True, input=input
    )
    return result.stdout.decode().strip()


def toml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string (\u0000 and \n escapes included)


def pipeline_toml(pipeline: str, stage: str = "s", job: str = "j", body: str = 'command = ["true"]\n') -> str:
    return (
        f"[[pipelines]]\nname = {toml_str(pipeline)}\n"
        f"[[pipelines.stages]]\nname = {toml_str(stage)}\n"
        f"[[pipelines.stages.jobs]]\nname = {toml_str(job)}\n{body}"
    )


def make_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    for name, text in files.items():
        (path / name).write_text(text)
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "pipelines")
    return path


def base_config(extra: str = "", agents: int = 2) -> str:
    return f'[agents]\ncount = {agents}\ncancel_grace = "500ms"\n[maintenance]\nsubsystem_restart_delay = "100ms"\n{extra}'


def config_repo_section(repo: Path) -> str:
    return f'[[config_repos]]\nname = "pipelines"\nurl = "{repo}"\npoll_interval = "200ms"\npoll_timeout = "20s"\n'


def ctl_json(d: Daemon, *args: str) -> Any:
    result = d.maintctl(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def pipeline_names(d: Daemon) -> set[str]:
    return {p["name"] for p in ctl_json(d, "pipelines")["pipelines"]}


def run_to_pass(d: Daemon, pipeline: str) -> dict[str, Any]:
    triggered = ctl_json(d, "trigger", pipeline)

    def passed() -> dict[str, Any] | None:
        runs = ctl_json(d, "runs", "--pipeline", pipeline, "--limit", "5")["runs"]
        run = next((r for r in runs if r["counter"] == triggered["counter"]), None)
        if run is not None and run["state"] in ("failed", "cancelled"):
            raise AssertionError(f"{pipeline} run ended {run['state']}: {run}\n{d.log_text()}")
        return run if run is not None and run["state"] == "passed" else None

    return wait_for(passed, 20, f"{pipeline} to pass")


def tree(root: Path, skip: tuple[Path, ...] = ()) -> set[str]:
    """Every path under ``root`` (not following symlinks), but those under ``skip``."""
    found: set[str] = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if not any(path == s or path.is_relative_to(s) for s in skip):
                found.add(str(path))
    return found


def state_entries(d: Daemon) -> set[str]:
    return {p.name for p in d.state.iterdir()} - {"maintd.db", "maintd.db-wal", "maintd.db-shm", "maintd.lock"}


# -- (a) pipelines as code cannot name a path outside the workspaces -------------------------


def test_bad_names_in_config_repo_files_are_refused_and_a_good_pipeline_runs_inside_the_workspaces(
    tmp_path: Path, make_daemon: Any
) -> None:
    files: dict[str, str] = {
        "good.toml": pipeline_toml(
            "from-repo", "build", "where", 'shell = "pwd -P; echo HOME=$HOME; umask; echo made > made.txt"\n'
        )
    }
    expected: dict[str, str] = {}  # file -> the key path its log line names
    for label, name in BAD_NAMES.items():
        files[f"pipeline-{label}.toml"] = pipeline_toml(name)
        expected[f"pipeline-{label}.toml"] = "$.pipelines[0].name"
        files[f"stage-{label}.toml"] = pipeline_toml(f"stage-{label}", stage=name)
        expected[f"stage-{label}.toml"] = "$.pipelines[0].stages[0].name"
        files[f"job-{label}.toml"] = pipeline_toml(f"job-{label}", job=name)
        expected[f"job-{label}.toml"] = "$.pipelines[0].stages[0].jobs[0].name"
    # The other strings of a job: env names and NUL characters, refused when the file is read
    # rather than when the job cannot start; a material that is not configured.
    files["env-name.toml"] = pipeline_toml("env-name", body='command = ["true"]\nenv = { "A=B" = "x" }\n')
    expected["env-name.toml"] = "is not an environment variable name"
    files["env-nul.toml"] = pipeline_toml("env-nul", body='command = ["true"]\nenv = { A = "x\\u0000y" }\n')
    expected["env-nul.toml"] = "NUL"
    files["command-nul.toml"] = pipeline_toml("command-nul", body='command = ["cat", "/etc/hostname\\u0000"]\n')
    expected["command-nul.toml"] = "NUL"
    files["material.toml"] = pipeline_toml("material").replace(
        'name = "material"\n', 'name = "material"\nmaterials = ["../../etc"]\n', 1
    )
    expected["material.toml"] = "$.pipelines[0].materials[0]"
    repo = make_repo(tmp_path / "pipelines", files)
    revision = git(repo, "rev-parse", "HEAD")

    d = make_daemon(config=base_config(config_repo_section(repo)))
    wait_for(lambda: f"config repo pipelines at {revision[:12]}: 1 pipeline(s)" in d.log_text(), 20, "the repo merged")
    assert pipeline_names(d) == {"from-repo"}
    log = d.log_text()
    for path, where in expected.items():
        line = next((x for x in log.splitlines() if f"config repo pipelines, {path} at {revision[:12]}:" in x), None)
        assert line is not None, f"no log line for {path}:\n{log}"
        assert where in line and line.endswith("file skipped"), line

    run = run_to_pass(d, "from-repo")
    (job,) = run["jobs"]
    out = ctl_json(d, "logs", str(job["id"]))["text"].splitlines()
    workspaces = d.state.resolve() / "workspaces"
    workspace = workspaces / "from-repo" / str(run["counter"]) / "build" / "where"
    assert Path(os.path.realpath(out[0])) == workspace.resolve()
    assert Path(os.path.realpath(out[0])).is_relative_to(workspaces)
    assert out[1:] == [f"HOME={d.state / 'workspaces' / 'from-repo' / str(run['counter']) / 'build' / 'where'}", "0027"]
    assert (workspace / "made.txt").read_text() == "made\n"

    # Nothing was made outside STATE/workspaces and STATE/logs, and nothing for the bad files.
    assert state_entries(d) == {"workspaces", "logs"}
    assert [p.name for p in workspaces.iterdir()] == ["from-repo"]
    assert [p.name for p in (d.state / "logs").iterdir()] == ["from-repo"]
    made = [Path(p).relative_to(tmp_path) for p in tree(tmp_path, skip=(repo,))]
    assert not [p for p in made if "escape" in str(p)], made
    assert not Path(BAD_NAMES["absolute"]).exists()


def test_symlinks_and_crafted_paths_in_a_config_repo_never_reach_the_host(tmp_path: Path, make_daemon: Any) -> None:
    # A file on the host that is a valid pipeline file: if the daemon ever read it, "leaked"
    # would appear among the pipelines.
    outside = tmp_path / "outside.toml"
    outside.write_text(pipeline_toml("leaked"))
    repo = make_repo(tmp_path / "pipelines", {"good.toml": pipeline_toml("good")})
    (repo / "absolute-link.toml").symlink_to(outside)
    (repo / "relative-link.toml").symlink_to(Path("..") / outside.name)
    (repo / "passwd.toml").symlink_to("/etc/passwd")
    (repo / "linked-dir").symlink_to(tmp_path)  # a folder symlink: git stores a link, not the folder
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "links")
    # Tree entries git itself never writes (git fsck calls them hasDotdot, hasDot, hasDotgit,
    # and a newline in a name), made with mktree: their blobs are valid pipeline files.
    names = {"dotdot": "..", "dot": ".", "dotgit": ".git", "newline": "new\nline"}
    head_tree = git(repo, "rev-parse", "HEAD^{tree}")
    entries = git(repo, "ls-tree", "-z", head_tree).encode().split(b"\0")
    for label, folder in names.items():
        blob = git(repo, "hash-object", "-w", "--stdin", input=pipeline_toml(f"crafted-{label}").encode())
        sub = git(repo, "mktree", "-z", input=f"100644 blob {blob}\tx.toml\0".encode())
        entries.append(f"040000 tree {sub}\t{folder}".encode())
    blob = git(repo, "hash-object", "-w", "--stdin", input=pipeline_toml("crafted-file").encode())
    entries.append(f"100644 blob {blob}\tnew\nline.toml".encode())
    top = git(repo, "mktree", "-z", input=b"\0".join(e for e in entries if e) + b"\0")
    commit = git(repo, "commit-tree", top, "-p", "HEAD", "-m", "crafted", input=b"")
    git(repo, "update-ref", "refs/heads/main", commit)
    listed = git(repo, "ls-tree", "-r", "-z", "--name-only", commit).split("\0")
    assert "../x.toml" in listed and "passwd.toml" in listed  # the repository holds what the test means

    d = make_daemon(config=base_config(config_repo_section(repo)))
    wait_for(lambda: f"config repo pipelines at {commit[:12]}:" in d.log_text(), 20, "the crafted commit merged")
    log = d.log_text()
    merged = pipeline_names(d)
    assert "leaked" not in merged and "good" in merged, merged
    # A path git would not write is refused by name; none of its pipelines is taken.
    assert not {n for n in merged if n.startswith("crafted-")}, merged
    for shown in ("'../x.toml'", "'./x.toml'", "'.git/x.toml'", "'new\\nline/x.toml'", "'new\\nline.toml'"):
        assert f"config repo pipelines, {shown} at {commit[:12]}: not a clean path in the repository" in log, log
    assert f"config repo pipelines at {commit[:12]}: 1 pipeline(s)" in log
    assert state_entries(d) <= {"workspaces", "logs"}
    assert outside.read_text() == pipeline_toml("leaked")


# -- (b) no request reads or writes outside the state directory -------------------------------


def one_job_pipeline(name: str, shell: str) -> str:
    return pipeline_toml(name, "s", "j", f"shell = {toml_str(shell)}\n")


def job_log(d: Daemon, pipeline: str, counter: int = 1) -> Path:
    return d.state / "logs" / pipeline / str(counter) / "s" / "j.log"


def test_a_job_that_swaps_its_own_log_for_a_symlink_is_refused_forbidden(tmp_path: Path, make_daemon: Any) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT\n")
    # The job's cwd is STATE/workspaces/P/C/S/J, so its log is five folders up, in logs/.
    log = '../../../../../logs/"$GO_PIPELINE_NAME/$GO_PIPELINE_COUNTER/$GO_STAGE_NAME/$GO_JOB_NAME".log'
    d = make_daemon(config=base_config(one_job_pipeline("swap", f'echo before; ln -sf "{secret}" {log}; echo after')))
    run = run_to_pass(d, "swap")
    assert job_log(d, "swap").is_symlink()  # the job did what it meant to
    refused = d.maintctl("logs", str(run["jobs"][0]["id"]))
    assert refused.returncode == 1, refused
    assert "forbidden" in refused.stderr and "symlink" in refused.stderr, refused.stderr
    assert "TOP-SECRET" not in refused.stdout + refused.stderr
    assert secret.read_text() == "TOP-SECRET-CONTENT\n"


def swap_for_symlink_to_outside(d: Daemon, log: Path, tmp: Path) -> None:
    outside = tmp / "outside.log"
    outside.write_text("TOP-SECRET-CONTENT\n")
    log.unlink()
    log.symlink_to(outside)


def swap_folder_for_symlink(d: Daemon, log: Path, tmp: Path) -> None:
    outside = tmp / "outside-stage"
    outside.mkdir()
    (outside / log.name).write_text("TOP-SECRET-CONTENT\n")
    folder = log.parent
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    folder.symlink_to(outside, target_is_directory=True)


def swap_for_symlink_inside_state(d: Daemon, log: Path, tmp: Path) -> None:
    log.unlink()
    log.symlink_to(d.state / "maintd.db")  # inside the state directory, but not a log


def swap_for_fifo(d: Daemon, log: Path, tmp: Path) -> None:
    log.unlink()
    os.mkfifo(log)  # an open() for reading would wait for a writer for ever


def swap_for_hard_link(d: Daemon, log: Path, tmp: Path) -> None:
    outside = tmp / "outside.log"
    outside.write_text("TOP-SECRET-CONTENT\n")
    log.unlink()
    os.link(outside, log)


@pytest.mark.parametrize(
    ("swap", "why"),
    [
        (swap_for_symlink_to_outside, "it is a symlink"),
        (swap_folder_for_symlink, "s in its path is not a folder"),
        (swap_for_symlink_inside_state, "it is a symlink"),
        (swap_for_fifo, "it is not a regular file"),
        (swap_for_hard_link, "it has other hard links"),
    ],
    ids=["symlink-outside", "folder-symlink", "symlink-inside-state", "fifo", "hard-link"],
)
def test_a_log_replaced_behind_the_daemons_back_is_refused_forbidden(
    tmp_path: Path, make_daemon: Any, swap: Any, why: str
) -> None:
    d = make_daemon(config=base_config(one_job_pipeline("p", "echo the real log")))
    run = run_to_pass(d, "p")
    job_id = str(run["jobs"][0]["id"])
    assert ctl_json(d, "logs", job_id)["text"] == "the real log\n"  # readable before
    swap(d, job_log(d, "p"), tmp_path)
    refused = d.maintctl("logs", job_id, timeout=15)
    assert refused.returncode == 1, refused
    assert f"forbidden: job {job_id}'s log is refused: {why}" in refused.stderr, refused.stderr
    assert "TOP-SECRET" not in refused.stdout
    for args in (["--all"], ["--follow"]):  # read by offset, through the same checks
        refused = d.maintctl("logs", *args, job_id, timeout=15)
        assert refused.returncode == 1 and f"log is refused: {why}" in refused.stderr, refused
        assert "TOP-SECRET" not in refused.stdout
    assert d.maintctl("status").returncode == 0  # and the daemon serves on


def test_a_symlink_planted_where_a_later_runs_log_will_be_is_not_written_through(tmp_path: Path, make_daemon: Any) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("ORIGINAL\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    up = "../../../../.."  # from STATE/workspaces/p/1/s/j to STATE
    plant = (
        f"if [ $GO_PIPELINE_COUNTER = 1 ]; then mkdir -p {up}/logs/p/2/s {up}/workspaces/p/2;"
        f' ln -s "{outside}" {up}/logs/p/2/s/j.log; ln -s "{elsewhere}" {up}/workspaces/p/2/s; fi; pwd -P'
    )
    d = make_daemon(config=base_config(one_job_pipeline("p", plant)))
    run_to_pass(d, "p")
    second = run_to_pass(d, "p")
    assert second["counter"] == 2
    assert outside.read_text() == "ORIGINAL\n", "the daemon wrote run 2's log through the symlink, outside STATE"
    assert not list(elsewhere.iterdir()), "run 2's workspace was made through the symlink, outside STATE"


#: Every string of every request type that could be taken for a path.
PATHS = ["../../escape", "../escape", "..", "a/b", "/tmp/maintd-escape", "escape\n", "nul\0escape", "escape/../..", "."]


def test_path_like_names_in_requests_are_refused_and_create_nothing(tmp_path: Path, make_daemon: Any) -> None:
    release = tmp_path / "release"
    held = one_job_pipeline("hold", f'while [ ! -e "{release}" ]; do sleep 0.02; done')
    d = make_daemon(config=base_config(one_job_pipeline("build", "echo ok") + held))
    run_to_pass(d, "build")
    assert ctl_json(d, "trigger", "hold")["counter"] == 1  # building while the names are tried
    wait_for(lambda: ctl_json(d, "runs", "--pipeline", "hold")["runs"][0]["jobs"][0]["state"] == "building", 15, "hold")
    before = tree(tmp_path, skip=(d.log,)) - {str(d.state / n) for n in ("maintd.db-wal", "maintd.db-shm")}
    c = d.client()

    def code(kind: str, **fields: Any) -> str:
        reply = c.request(kind, **fields)
        assert not reply["ok"], (kind, fields, reply)
        return reply["error"]["code"]

    for name in PATHS:
        assert code("trigger", pipeline=name) == "not_found"
        assert code("pipeline_pause", pipeline=name) == "not_found"
        assert code("pipeline_unpause", pipeline=name) == "not_found"
        assert code("cancel_run", pipeline=name, counter=1) == "not_found"
        assert code("cancel_run", pipeline="hold", counter=1, stage=name) == "not_found"
        assert code("cancel", item=name) in ("not_found", "bad_request")
        assert code("register", name=name) == "bad_request"
        assert code("runs", pipeline=name) == "not_found"  # neither configured nor run (issue 13)
    for job in (0, -1, "../1", 2**62):
        assert code("logs", job=job) in ("bad_request", "not_found")
    # Requests that take no string take no path either: an unknown field is refused.
    for kind in ("status", "inflight", "history", "watch", "ping", "pipelines", "agents", "reload"):
        assert code(kind, path="../../escape") == "bad_request"
    # Strings that are only text: a reason, an external subsystem's item ids and drain ids.
    sub = Line(d.socket)
    assert sub.request("register", name="ext")["ok"]
    assert c.request("enable", reason="../../escape")["ok"]
    pause = sub.next_event(lambda m: m.get("type") == "pause_intake")
    sub.send(type="in_flight", items=[{"id": "../../escape", "kind": "building_job"}])
    sub.send(type="intake_paused", drain_id=pause["drain_id"])
    sub.send(type="in_flight", items=[])
    sub.send(type="drained", drain_id=pause["drain_id"])
    sub.close()
    assert c.request("disable", reason="../escape")["ok"]
    assert c.request("status")["ok"]

    # Through maintctl too: refused, nothing made.
    for args in (("trigger", "../../escape"), ("pipeline", "pause", "../x"), ("cancel-run", "../../escape/1")):
        result = d.maintctl(*args)
        assert result.returncode == 1 and "not_found" in result.stderr, (args, result.stderr)
    after = tree(tmp_path, skip=(d.log,)) - {str(d.state / n) for n in ("maintd.db-wal", "maintd.db-shm")}
    assert after == before, after ^ before
    assert not Path("/tmp/maintd-escape").exists()
    release.touch()
    wait_for(lambda: ctl_json(d, "runs", "--pipeline", "hold")["runs"][0]["state"] == "passed", 15, "hold to pass")


def test_reload_reads_only_the_configured_file(tmp_path: Path, make_daemon: Any) -> None:
    d = make_daemon(config=base_config(one_job_pipeline("first", "true")))
    config = d.tmp / "maintd.toml"
    c = d.client()
    # A reload takes no path: one named is an unknown field, and nothing is read.
    reply = c.request("reload", path="/etc/passwd")
    assert reply["error"]["code"] == "bad_request" and "path" in reply["error"]["message"], reply
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(base_config(one_job_pipeline("elsewhere", "true")))
    config.write_text(base_config(one_job_pipeline("second", "true")))
    assert c.request("reload")["result"] == {"pipelines": 1}
    assert pipeline_names(d) == {"second"}
    # Gone: refused, naming the configured file; no other file (a default path) is tried.
    config.unlink()
    reply = c.request("reload")
    assert reply["error"]["code"] == "bad_config", reply
    assert f"{config.resolve()}: cannot read the config file" in reply["error"]["message"], reply
    assert pipeline_names(d) == {"second"}


def test_reload_without_a_config_file_reads_nothing(make_daemon: Any) -> None:
    d = make_daemon()
    reply = d.client().request("reload")
    assert reply["error"]["code"] == "bad_request" and "without --config" in reply["error"]["message"], reply


# -- (c) file modes under a umask of 000 ------------------------------------------------------


def umask_000(d: Daemon) -> Daemon:
    d.cmd = ["/bin/sh", "-c", 'umask 000; exec "$0" "$@"', *d.cmd]
    return d


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize(("configured", "expected"), [(None, 0o660), ("0600", 0o600), ("0640", 0o640)])
def test_under_umask_000_the_socket_has_its_mode_and_state_is_not_open_to_others(
    make_daemon: Any, configured: str | None, expected: int
) -> None:
    control = f'[control]\nmode = "{configured}"\n' if configured else ""
    d = make_daemon(config=control + base_config(one_job_pipeline("p", "umask; echo x > out.txt")), start=False)
    umask_000(d).start()
    assert d.proc is not None
    daemon_umask = next(x for x in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines() if x.startswith("Umask:"))
    assert daemon_umask.split()[1] == "0027", daemon_umask
    assert d.socket.is_socket()
    assert mode(d.socket) == expected, oct(mode(d.socket))
    assert mode(d.socket.parent) == 0o755, oct(mode(d.socket.parent))  # reachable, not writable by others
    run = run_to_pass(d, "p")
    assert ctl_json(d, "logs", str(run["jobs"][0]["id"]))["text"] == "0027\n"  # what jobs inherit
    db_files = [d.state / n for n in ("maintd.db", "maintd.db-wal", "maintd.db-shm") if (d.state / n).exists()]
    assert d.state / "maintd.db" in db_files
    checked = [d.state, *db_files, *(Path(p) for p in tree(d.state))]
    assert len(checked) > 10
    loose = {str(p): oct(mode(p)) for p in checked if mode(p) & 0o027}
    assert not loose, loose
    assert mode(d.state) == 0o750 and mode(d.state / "maintd.db") == 0o640


@pytest.mark.parametrize(
    ("mode", "warned"), [(0o777, "its group and everyone (mode 0777)"), (0o757, "everyone (mode 0757)"), (0o750, None)]
)
def test_a_state_directory_others_can_write_is_named_in_a_warning(make_daemon: Any, mode: int, warned: str | None) -> None:
    d = make_daemon(start=False)
    d.state.mkdir()
    d.state.chmod(mode)
    d.start()
    assert stat.S_IMODE(d.state.stat().st_mode) == mode  # not changed behind the operator's back
    text = d.log_text()
    if warned is None:
        assert "state directory" not in text, text
    else:
        assert f"state directory {d.state} is writable by {warned}" in text, text
        assert f"chmod go-w {d.state}" in text
