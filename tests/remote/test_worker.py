"""maintd-agent as maintd drives it: real redis-server, real worker processes, a plain Celery
client (:func:`remote.contract.make_app`, ``send_task`` to the worker's own queue).

The jobs write their pids to files and wait on files the test makes; every wait polls with
a deadline. A task's state is read fresh from the result backend each time
(``get_task_meta(cache=False)``): after a revoke it is REVOKED until the task's own result
(``cancelled``) replaces it, and an AsyncResult would keep the first ready state it saw.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from remote.contract import TASK_NAME, JobStart, RemoteJob, RemoteResult, log_stream, make_app, worker_queue
from tests.conftest import alive, wait_for
from tests.remote.conftest import RedisServer, Worker, marked

WAIT = 20.0
#: in every task id: runs of these tests at the same time on one host (other checkouts, xdist)
#: must not meet, since a job's processes are found by their marker, the task id
RUN = uuid.uuid4().hex[:8]


def tid(name: str) -> str:
    return f"{name}-{RUN}"


@pytest.fixture
def client(redis_server: RedisServer) -> Any:
    app = make_app(redis_server.url)
    yield app
    app.close()  # type: ignore[attr-defined]


def job(task_id: str, **fields: Any) -> RemoteJob:
    base: dict[str, Any] = {
        "job_id": 1,
        "pipeline": "p",
        "pipeline_counter": 7,
        "stage": "s",
        "stage_counter": 1,
        "job": "j",
        "grace": 1.0,
    }
    return RemoteJob(task_id=task_id, **{**base, **fields})


def send(app: Any, worker: Worker | str, spec: RemoteJob, queue: str = "maintd") -> Any:
    name = worker if isinstance(worker, str) else worker.name
    return app.send_task(TASK_NAME, args=[msgspec.to_builtins(spec)], task_id=spec.task_id, queue=worker_queue(queue, name))


def result(app: Any, task_id: str, timeout: float = WAIT) -> RemoteResult:
    """The task's own result, once the backend has it (a REVOKED in between is passed over)."""

    def done() -> dict[str, Any] | None:
        meta = app.backend.get_task_meta(task_id, cache=False)
        return meta if meta["status"] == "SUCCESS" else None

    meta = wait_for(done, timeout, f"the result of {task_id}", every=0.02)
    return msgspec.convert(meta["result"], RemoteResult)


def state(app: Any, task_id: str) -> str:
    return app.backend.get_task_meta(task_id, cache=False)["status"]


def entries(redis_server: RedisServer, task_id: str) -> list[tuple[str, bytes]]:
    """The stream's entries as (kind, value): kind is start, data or end."""
    out = []
    for _id, fields in redis_server.client().xrange(log_stream(task_id)):
        ((key, value),) = fields.items()
        out.append((key.decode(), value))
    return out


def output(redis_server: RedisServer, task_id: str) -> bytes:
    return b"".join(value for kind, value in entries(redis_server, task_id) if kind == "data")


def pids_in(path: Path) -> list[int] | None:
    try:
        return [int(x) for x in path.read_text().split()] or None
    except (OSError, ValueError):
        return None


def check_stream_shape(redis_server: RedisServer, task_id: str, res: RemoteResult, started: bool = True) -> None:
    got = entries(redis_server, task_id)
    kinds = [kind for kind, _ in got]
    assert kinds[-1] == "end" and kinds.count("end") == 1, kinds
    assert msgspec.json.decode(got[-1][1], type=RemoteResult) == res
    if started:
        assert kinds[0] == "start" and kinds.count("start") == 1, kinds
        start = msgspec.json.decode(got[0][1], type=JobStart)
        assert start.pid == res.pid and start.worker == res.worker
    else:
        assert "start" not in kinds
    assert redis_server.client().ttl(log_stream(task_id)) > 0


PRINT_ENV = textwrap.dedent(
    """
    import json, os, sys
    print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}), flush=True)
    sys.exit(3)
    """
)


def test_a_job_runs_in_its_workspace_with_its_env_and_returns_its_result(
    redis_server: RedisServer, start_worker: Any, client: Any
) -> None:
    worker = start_worker("a1", broker_url=redis_server.url)
    spec = job(tid("env-1"), argv=(sys.executable, "-c", PRINT_ENV), env={"GO_PIPELINE_NAME": "p", "GO_JOB_NAME": "j"})
    res = msgspec.convert(send(client, worker, spec).get(timeout=WAIT), RemoteResult)
    assert res.returncode == 3 and res.error is None and not res.timed_out and not res.cancelled
    assert res.worker == worker.node and res.leftovers == 0
    assert res.pid and res.started_at and res.finished_at and res.started_at <= res.finished_at
    seen = msgspec.json.decode(output(redis_server, tid("env-1")).splitlines()[0])
    workspace = worker.work_dir / "workspaces" / "p" / "7" / "s" / "j"
    assert workspace.is_dir() and Path(seen["cwd"]) == workspace.resolve()
    env = seen["env"]
    assert env["GO_PIPELINE_NAME"] == "p" and env["GO_JOB_NAME"] == "j" and env["MAINTD_JOB"] == tid("env-1")
    assert env["HOME"] == str(workspace) and env["PATH"] and env["LANG"]
    assert "PYTHONPATH" not in env  # nothing of the worker's own environment
    check_stream_shape(redis_server, tid("env-1"), res)
    assert (worker.work_dir / "logs" / f"{tid('env-1')}.log").read_bytes() == output(redis_server, tid("env-1"))

    shell = send(client, worker, job(tid("sh-1"), shell='echo "$GO_X" from sh; exit 0', env={"GO_X": "x"}))
    assert shell.get(timeout=WAIT)["returncode"] == 0
    assert output(redis_server, tid("sh-1")) == b"x from sh\n"


def test_output_is_in_the_stream_while_the_job_runs(
    redis_server: RedisServer, start_worker: Any, client: Any, tmp_path: Path
) -> None:
    worker = start_worker("a1", broker_url=redis_server.url)
    go = tmp_path / "go"
    shell = f'echo first; while [ ! -e "{go}" ]; do sleep 0.02; done; echo second'
    send(client, worker, job(tid("live-1"), shell=shell))
    wait_for(lambda: output(redis_server, tid("live-1")) == b"first\n", WAIT, "the first line in the stream")
    assert state(client, tid("live-1")) == "STARTED"
    assert entries(redis_server, tid("live-1"))[0][0] == "start"
    go.touch()
    res = result(client, tid("live-1"))
    assert res.returncode == 0
    assert output(redis_server, tid("live-1")) == b"first\nsecond\n"
    check_stream_shape(redis_server, tid("live-1"), res)


DOUBLE_FORK = textwrap.dedent(
    """
    import os, sys
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            open(sys.argv[1], "w").write(str(os.getpid()))
            os.execvp("sleep", ["sleep", "300"])
        os._exit(0)
    os.wait()
    while not os.path.exists(sys.argv[1]) or not open(sys.argv[1]).read():
        pass
    print("main done", flush=True)
    """
)


def test_what_the_job_leaves_running_is_killed_and_counted(
    redis_server: RedisServer, start_worker: Any, client: Any, tmp_path: Path
) -> None:
    worker = start_worker("a1", broker_url=redis_server.url)
    pid_file = tmp_path / "orphan.pid"
    send(client, worker, job(tid("left-1"), argv=(sys.executable, "-c", DOUBLE_FORK, str(pid_file)), grace=0.3))
    res = result(client, tid("left-1"))
    (orphan,) = wait_for(lambda: pids_in(pid_file), WAIT, "the orphan's pid")
    assert res.returncode == 0 and res.leftovers == 1 and not res.cancelled
    assert not alive(orphan)
    assert output(redis_server, tid("left-1")) == b"main done\nmaintd: killed 1 leftover process\n"
    check_stream_shape(redis_server, tid("left-1"), res)
    assert not marked(tid("left-1"))


def test_leftovers_wait_keeps_the_job_until_its_last_process_ends(
    redis_server: RedisServer, start_worker: Any, client: Any, tmp_path: Path
) -> None:
    worker = start_worker("a1", broker_url=redis_server.url)
    go, main_pid, late_pid = tmp_path / "go", tmp_path / "main.pid", tmp_path / "late.pid"
    late = f'echo $$ > "{late_pid}"; while [ ! -e "{go}" ]; do sleep 0.02; done; echo late'
    shell = f'(setsid sh -c \'{late}\' &); echo $$ > "{main_pid}"; while [ ! -s "{late_pid}" ]; do sleep 0.02; done'
    send(client, worker, job(tid("wait-1"), shell=shell, leftovers="wait", grace=0.1))
    (main,) = wait_for(lambda: pids_in(main_pid), WAIT, "the main pid")
    wait_for(lambda: not alive(main), WAIT, "the main process to end")
    assert state(client, tid("wait-1")) == "STARTED"  # the setsid'd child still runs
    go.touch()
    res = result(client, tid("wait-1"))
    assert res.returncode == 0 and res.leftovers == 0
    assert output(redis_server, tid("wait-1")) == b"late\n"
    assert not marked(tid("wait-1"))


CANCEL_TREE = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    folder = sys.argv[1]
    subprocess.Popen(["sh", "-c", 'echo $$ > "$0"/setsid.pid; exec sleep 300', folder], start_new_session=True)
    stubborn = (
        "import os, signal, sys, time\\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        "open(sys.argv[1] + '/stubborn.pid', 'w').write(str(os.getpid()))\\n"
        "while True: signal.pause()\\n"
    )
    subprocess.Popen([sys.executable, "-c", stubborn, folder])
    print("running", flush=True)
    signal.pause()
    """
)


def test_a_revoke_kills_the_whole_tree_and_the_result_says_cancelled(
    redis_server: RedisServer, start_worker: Any, client: Any, tmp_path: Path
) -> None:
    worker = start_worker("a1", broker_url=redis_server.url)
    send(client, worker, job(tid("cancel-1"), argv=(sys.executable, "-c", CANCEL_TREE, str(tmp_path)), grace=1.0))
    (setsid_pid,) = wait_for(lambda: pids_in(tmp_path / "setsid.pid"), WAIT, "the setsid'd grandchild")
    (stubborn,) = wait_for(lambda: pids_in(tmp_path / "stubborn.pid"), WAIT, "the child that ignores SIGTERM")
    wait_for(lambda: output(redis_server, tid("cancel-1")) == b"running\n", WAIT, "the job's output")
    assert len(marked(tid("cancel-1"))) == 3
    revoked_at = time.monotonic()
    client.control.revoke(tid("cancel-1"), terminate=True, signal="SIGTERM")
    res = result(client, tid("cancel-1"))
    assert time.monotonic() - revoked_at >= 0.9  # the stubborn child needed the SIGKILL after the grace
    assert res.cancelled and not res.timed_out and res.returncode == -signal.SIGTERM
    assert not alive(setsid_pid) and not alive(stubborn)
    assert not marked(tid("cancel-1"))
    check_stream_shape(redis_server, tid("cancel-1"), res)
    # the pool process lives on and takes the next job
    assert send(client, worker, job(tid("after-1"), argv=("true",))).get(timeout=WAIT)["returncode"] == 0


def test_a_job_past_its_timeout_is_stopped(redis_server: RedisServer, start_worker: Any, client: Any) -> None:
    worker = start_worker("a1", broker_url=redis_server.url)
    started = time.monotonic()
    send(client, worker, job(tid("slow-1"), argv=("sleep", "300"), timeout=0.5, grace=0.5))
    res = result(client, tid("slow-1"))
    assert time.monotonic() - started >= 0.5
    assert res.timed_out and not res.cancelled and res.returncode == -signal.SIGTERM
    assert not marked(tid("slow-1"))
    check_stream_shape(redis_server, tid("slow-1"), res)


def test_a_job_that_cannot_start_says_why(redis_server: RedisServer, start_worker: Any, client: Any) -> None:
    worker = start_worker("a1", broker_url=redis_server.url)
    send(client, worker, job(tid("nope-1"), argv=("/nonexistent/program", "x")))
    res = result(client, tid("nope-1"))
    assert res.returncode is None and res.error is not None and res.error.startswith("cannot start: ")
    assert "/nonexistent/program" in res.error
    assert output(redis_server, tid("nope-1")) == f"maintd: {res.error}\n".encode()
    check_stream_shape(redis_server, tid("nope-1"), res, started=False)

    bad = job(tid("bad-1"), pipeline="..", argv=("true",))
    res = result(client, send(client, worker, bad).id)
    assert res.returncode is None and res.error is not None and "unsafe" in res.error


def test_each_worker_takes_only_the_jobs_of_its_own_queue(redis_server: RedisServer, start_worker: Any, client: Any) -> None:
    a = start_worker("a1", broker_url=redis_server.url)
    b = start_worker("b1", broker_url=redis_server.url)
    for n, worker in enumerate((a, b, a, b)):
        spec = job(tid(f"q-{n}"), argv=("sh", "-c", "pwd"))
        res = msgspec.convert(send(client, worker, spec).get(timeout=WAIT), RemoteResult)
        assert res.worker == worker.node
        assert output(redis_server, spec.task_id).decode().startswith(str(worker.work_dir.resolve()))
    send(client, "c1", job(tid("q-nobody"), argv=("true",)))
    # nobody consumes another agent's queue: the message is still in it
    assert redis_server.client().llen(worker_queue("maintd", "c1")) == 1
    assert state(client, tid("q-nobody")) == "PENDING"


def test_output_written_while_redis_is_down_reaches_the_stream_when_it_is_back(
    redis_server: RedisServer, start_worker: Any, client: Any, tmp_path: Path
) -> None:
    worker = start_worker("a1", broker_url=redis_server.url)
    go, gone = tmp_path / "go", tmp_path / "gone"
    shell = f'echo before; while [ ! -e "{go}" ]; do sleep 0.02; done; echo during; touch "{gone}"; exit 5'
    send(client, worker, job(tid("down-1"), shell=shell))
    wait_for(lambda: output(redis_server, tid("down-1")) == b"before\n", WAIT, "the job to run")
    redis_server.stop()
    go.touch()
    wait_for(gone.exists, WAIT, "the job to end while Redis is down")
    redis_server.start()
    res = result(client, tid("down-1"), timeout=30)
    assert res.returncode == 5
    assert output(redis_server, tid("down-1")) == b"before\nduring\n"
    check_stream_shape(redis_server, tid("down-1"), res)
    # the worker is back on its queue
    assert result(client, send(client, worker, job(tid("down-2"), argv=("true",))).id, timeout=30).returncode == 0


def test_sigterm_is_a_warm_shutdown_the_running_job_finishes(
    redis_server: RedisServer, start_worker: Any, client: Any, tmp_path: Path
) -> None:
    worker = start_worker("a1", broker_url=redis_server.url)
    go = tmp_path / "go"
    send(client, worker, job(tid("warm-1"), shell=f'echo waiting; while [ ! -e "{go}" ]; do sleep 0.02; done; exit 4'))
    wait_for(lambda: output(redis_server, tid("warm-1")) == b"waiting\n", WAIT, "the job to run")
    worker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "Warm shutdown" in worker.log_text(), WAIT, "the worker to begin its warm shutdown")
    assert worker.proc.poll() is None and state(client, tid("warm-1")) == "STARTED"
    go.touch()
    res = result(client, tid("warm-1"))
    assert res.returncode == 4 and not res.cancelled
    assert worker.proc.wait(WAIT) == 0
    check_stream_shape(redis_server, tid("warm-1"), res)


def test_kill9_takes_the_worker_and_its_pool(redis_server: RedisServer, start_worker: Any) -> None:
    worker = start_worker("a1", broker_url=redis_server.url, slots=2)
    pool = wait_for(lambda: len(worker.pool()) == 2 and worker.pool(), WAIT, "two pool processes")
    worker.kill9()
    assert worker.proc.returncode == -signal.SIGKILL
    wait_for(lambda: not any(alive(pid) for pid in pool), WAIT, "the pool processes to go")


def test_the_redis_server_keeps_its_data_across_a_restart(redis_server: RedisServer) -> None:
    redis_server.client().set("kept", b"yes")
    redis_server.stop()
    redis_server.start()
    assert redis_server.client().get("kept") == b"yes"


def test_bad_options_are_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for argv in (
        ["--slots", "0"],
        ["--name", "a b"],
        ["--broker", "http://example.com"],
        ["--heartbeat", "-1"],
        ["--broker-password-file", str(tmp_path / "missing")],
        ["--bogus"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "remote.worker", "--work-dir", str(tmp_path), *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 2, (argv, done.stderr)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("maintd-agent: "), (argv, done.stderr)
        assert "Traceback" not in done.stderr
    helped = subprocess.run(
        [sys.executable, "-m", "remote.worker", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert helped.returncode == 0 and "--broker-password-file" in helped.stdout and "warm shutdown" in helped.stdout


def test_the_password_goes_into_the_url_and_never_into_the_log() -> None:
    from remote.worker import mask, with_password

    url = with_password("redis://redis.example:6380/2", "s3cr/t@")
    assert url == "redis://:s3cr%2Ft%40@redis.example:6380/2"
    assert with_password("rediss://agent:old@h/0", "new") == "rediss://agent:new@h/0"
    assert mask(url) == "redis://:***@redis.example:6380/2" and mask("rediss://agent:new@h/0") == "rediss://agent:***@h/0"
    assert mask("redis://h:6379/0") == "redis://h:6379/0"


def test_the_agent_does_not_load_trio() -> None:
    code = "import sys, remote.worker, remote.task; print(sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'pykka')))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_a_lot_of_output_arrives_whole_and_in_order(redis_server: RedisServer, start_worker: Any, client: Any) -> None:
    worker = start_worker("a1", broker_url=redis_server.url)
    code = (
        "import sys\n"
        "for i in range(200_000): sys.stdout.write(f'{i:08d} ' + 'x' * 20 + '\\n')\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write('done\\n')"
    )
    res = result(client, send(client, worker, job(tid("much-1"), argv=(sys.executable, "-c", code))).id, timeout=60)
    assert res.returncode == 0
    expected = "".join(f"{i:08d} " + "x" * 20 + "\n" for i in range(200_000)).encode() + b"done\n"
    assert output(redis_server, tid("much-1")) == expected
    assert (worker.work_dir / "logs" / f"{tid('much-1')}.log").read_bytes() == expected
    check_stream_shape(redis_server, tid("much-1"), res)


def test_a_broker_password_from_a_file_is_used_and_never_logged(
    redis_server: RedisServer, start_worker: Any, tmp_path: Path
) -> None:
    secret = "pw-" + uuid.uuid4().hex
    redis_server.stop()
    redis_server.extra_args = ("--requirepass", secret)
    with_secret = f"redis://:{secret}@127.0.0.1:{redis_server.port}/0"
    redis_server.url = with_secret  # for the fixture's own clients
    redis_server.start()
    password_file = tmp_path / "password"
    password_file.write_text(secret + "\n")
    bare = f"redis://127.0.0.1:{redis_server.port}/0"
    worker = start_worker("a1", broker_url=bare, extra_args=("--broker-password-file", str(password_file)), ping_url=with_secret)
    app = make_app(with_secret)
    try:
        assert send(app, worker, job(tid("pw-1"), argv=("true",))).get(timeout=WAIT)["returncode"] == 0
    finally:
        app.close()  # type: ignore[attr-defined]
    assert worker.stop() == 0
    text = worker.log_text()
    assert secret not in text and "redis://:***@127.0.0.1" in text


def reserved(app: Any, worker: Worker) -> list[Any]:
    """What the worker holds but has not started (a round trip to it)."""
    replies = app.control.inspect(destination=[worker.node], timeout=5).reserved() or {}
    return replies[worker.node]


def test_a_busy_worker_leaves_the_next_job_in_the_broker(
    redis_server: RedisServer, start_worker: Any, client: Any, tmp_path: Path
) -> None:
    worker = start_worker("a1", broker_url=redis_server.url)
    go = tmp_path / "go"
    send(client, worker, job(tid("busy-1"), shell=f'echo hi; while [ ! -e "{go}" ]; do sleep 0.02; done'))
    wait_for(lambda: output(redis_server, tid("busy-1")) == b"hi\n", WAIT, "the first job to run")
    send(client, worker, job(tid("busy-2"), argv=("true",)))
    for _ in range(2):
        assert reserved(client, worker) == []
        assert redis_server.client().llen(worker_queue("maintd", worker.name)) == 1
    go.touch()
    assert result(client, tid("busy-2")).returncode == 0


def test_cancel_consumer_stops_the_intake_and_add_consumer_resumes_it(
    redis_server: RedisServer, start_worker: Any, client: Any
) -> None:
    worker = start_worker("a1", broker_url=redis_server.url)
    queue = worker_queue("maintd", worker.name)
    assert client.control.cancel_consumer(queue, destination=[worker.node], reply=True, timeout=5)
    send(client, worker, job(tid("off-1"), argv=("true",)))
    for _ in range(2):
        assert reserved(client, worker) == []
        assert redis_server.client().llen(queue) == 1 and state(client, tid("off-1")) == "PENDING"
    assert client.control.add_consumer(queue, destination=[worker.node], reply=True, timeout=5)
    assert result(client, tid("off-1")).returncode == 0


def test_a_pickled_task_is_refused_and_never_runs(redis_server: RedisServer, start_worker: Any, tmp_path: Path) -> None:
    """JSON only: whoever can write to the broker cannot make the worker unpickle (and so run) anything."""
    w = start_worker("w1", broker_url=redis_server.url)
    marker = tmp_path / "ran"
    pickler = make_app(redis_server.url)
    pickler.conf.update(task_serializer="pickle", accept_content=["pickle", "json"])  # type: ignore[attr-defined]
    spec = msgspec.to_builtins(job(tid("pickled"), argv=("touch", str(marker))))
    pickler.send_task(TASK_NAME, args=[spec], task_id=tid("pickled"), queue=worker_queue("maintd", "w1"))  # type: ignore[attr-defined]
    wait_for(lambda: "untrusted content" in w.log_text() or "ContentDisallowed" in w.log_text(), WAIT, "the refusal in the log")
    # the worker is still there and runs a JSON task: the pickled one never ran
    good = tid("after")
    result = send(make_app(redis_server.url), w, job(good, argv=("true",)))
    assert result.get(timeout=WAIT)["returncode"] == 0
    assert not marker.exists()
    pickler.close()  # type: ignore[attr-defined]


def test_a_child_that_clears_its_environment_is_still_part_of_the_job_and_killed(
    redis_server: RedisServer, start_worker: Any, client: Any, tmp_path: Path
) -> None:
    """The marker alone would miss it (``env -i``): the pool process is the child subreaper, so
    every descendant of it is the job's, whatever it did to its environment or its session."""
    worker = start_worker("a1", broker_url=redis_server.url)
    pidfile = tmp_path / "clean.pid"
    shell = f"env -i /usr/bin/setsid /bin/sh -c 'echo $$ > {pidfile}; exec sleep 300' & echo started; sleep 300"
    send(client, worker, job(tid("clean-1"), shell=shell, grace=1.0))
    (clean,) = wait_for(lambda: pids_in(pidfile), WAIT, "the child without an environment")
    assert (alive(clean) and not marked(tid("clean-1"))) or clean not in marked(tid("clean-1"))
    client.control.revoke(tid("clean-1"), terminate=True, signal="SIGTERM")
    # The stream's end entry (the backend may end up REVOKED: the worker's main process marks
    # it so after the signal, and this job stops quicker than that write)
    end = wait_for(lambda: [v for k, v in entries(redis_server, tid("clean-1")) if k == "end"], WAIT, "the job's end")
    assert msgspec.json.decode(end[0], type=RemoteResult).cancelled
    assert not alive(clean), "a process of the job outlived its cancel"
