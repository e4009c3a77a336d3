"""The HTTP server on a real socket (127.0.0.1, port 0) in the test's trio loop, fed synthetic statuses."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from actors.eta import Durations
from actors.status import Status
from daemon import config as config_mod
from daemon.bridge import Bridge
from daemon.foresight import Foresight
from daemon.http import HttpError, parse_listen, serve_http
from daemon.hub import StatusHub
from daemon.metrics import Metrics
from daemon.times import hhmm, human
from tests.synthetic import (
    T0,
    building,
    builtins,
    draining_with_work,
    external,
    maintenance,
    mdu,
    publish,
    scheduled,
    status,
    sub,
)

#: in the server's local time, with its zone
BANNER = f"root turned on maintenance mode at {human(T0 + 3.926)}."


class Server(msgspec.Struct):
    hub: StatusHub
    metrics: Metrics
    url: str
    port: int


async def start(nursery: trio.Nursery, first: Status | None = None) -> Server:
    hub = StatusHub(Bridge(trio.lowlevel.current_trio_token()), on_fatal=lambda error: None)
    metrics = Metrics(CollectorRegistry(), version="1.2.3")
    hub.listeners.append(metrics.update)
    host, port = await nursery.start(serve_http, "127.0.0.1:0", hub, metrics)
    assert host == "127.0.0.1" and port > 0
    if first is not None:
        await publish(hub, first)
    return Server(hub=hub, metrics=metrics, url=f"http://127.0.0.1:{port}", port=port)


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    return await start(nursery, status(maintenance("normal")))


@pytest.fixture
def client_timeout() -> Iterator[httpx.Timeout]:
    yield httpx.Timeout(10.0)


async def get(server: Server, path: str, method: str = "GET", **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        return await client.request(method, path, **kw)


def banner_position(page: str) -> int:
    """Where the banner is: after the main content, before the footer; -1 when absent."""
    at = page.find('id="maintenance-banner"')
    if at < 0:
        assert "turned on maintenance mode" not in page
        return -1
    assert page.rfind("</main>") < at < page.find("<footer"), "the banner sits between the main content and the footer"
    return at


# -- the server ------------------------------------------------------------------------------


async def test_reports_the_bound_port_and_logs_it(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="maintd.http")
    s = await start(nursery)
    assert f"http on 127.0.0.1:{s.port}" in caplog.text
    with socket.create_connection(("127.0.0.1", s.port), timeout=5):
        pass


async def test_a_port_in_use_is_a_clean_error(nursery: trio.Nursery) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    metrics = Metrics(CollectorRegistry())
    try:
        # as the daemon starts it: the error comes out of nursery.start as itself, not in a group
        with pytest.raises(HttpError, match=r"cannot listen on 127\.0\.0\.1:\d+: Address already in use"):
            await nursery.start(serve_http, f"127.0.0.1:{blocker.getsockname()[1]}", object(), metrics)
        with pytest.raises(HttpError, match="not HOST:PORT"):
            await nursery.start(serve_http, "nonsense", object(), metrics)
    finally:
        blocker.close()


async def test_cancelling_stops_it_promptly_with_a_connection_open() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            s = await start(nursery, status())
            stream = await trio.open_tcp_stream("127.0.0.1", s.port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a request half sent
            idle = await trio.open_tcp_stream("127.0.0.1", s.port)  # and an idle keep-alive connection
            nursery.cancel_scope.cancel()
        await stream.aclose()
        await idle.aclose()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=2).close()


async def test_503_before_the_first_status(nursery: trio.Nursery) -> None:
    s = await start(nursery)
    for path in ("/", "/api/maintenance_mode/info"):
        r = await get(s, path)
        assert r.status_code == 503, path
    assert (await get(s, "/metrics")).status_code == 200


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:9187") == ("127.0.0.1", 9187)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("localhost:80") == ("localhost", 80)
    for bad in ("127.0.0.1", ":80", "host:99999", "a b:1", "[::1]"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_config_http_section(tmp_path: Any) -> None:
    assert config_mod.Config().http.listen == "127.0.0.1:9187"
    assert config_mod.Config().http.enabled is True
    path = tmp_path / "maintd.toml"
    path.write_text('[http]\nlisten = "0.0.0.0:9999"\nenabled = false\n')
    cfg = config_mod.load(path)
    assert (cfg.http.listen, cfg.http.enabled) == ("0.0.0.0:9999", False)
    for bad, where in (('listen = "nope"', "$.http.listen"), ('listen = "1.2.3.4:70000"', "$.http.listen"), ("port = 1", "port")):
        path.write_text(f"[http]\n{bad}\n")
        with pytest.raises(config_mod.ConfigError, match=re.escape(where)):
            config_mod.load(path)


# -- methods and routes ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_read_only(server: Server, method: str) -> None:
    for path in ("/", "/metrics", "/api/maintenance_mode/info"):
        r = await get(server, path, method, content=b"{}")
        assert r.status_code == 405, (method, path)
        assert r.headers["allow"] == "GET, HEAD"


async def test_head_has_the_headers_and_no_body(server: Server) -> None:
    full = await get(server, "/api/maintenance_mode/info")
    r = await get(server, "/api/maintenance_mode/info", "HEAD")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == str(len(full.content))
    assert r.headers["content-type"] == "application/json"


async def test_unknown_paths_are_404(server: Server) -> None:
    for path in ("/nope", "/metrics/", "/api/maintenance_mode", "/../etc/passwd"):
        assert (await get(server, path)).status_code == 404, path


async def test_only_loopback_host_names_are_answered(server: Server) -> None:
    assert (await get(server, "/", headers={"host": "evil.example"})).status_code == 421
    assert (await get(server, "/metrics", headers={"host": "evil.example:9187"})).status_code == 421
    for host in ("localhost", "localhost:9187", "127.0.0.1", f"127.0.0.1:{server.port}", "[::1]:9187"):
        assert (await get(server, "/", headers={"host": host})).status_code == 200, host


async def test_security_headers(server: Server) -> None:
    r = await get(server, "/")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"


# -- /metrics --------------------------------------------------------------------------------


async def test_metrics_follow_the_published_status(server: Server) -> None:
    await publish(server.hub, draining_with_work())
    r = await get(server, "/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    assert samples[("maintd_maintenance_state", (("state", "draining"),))] == 1
    assert samples[("maintd_in_flight_items", (("kind", "building_job"), ("subsystem", "agents")))] == 2
    assert samples[("maintd_build_info", (("version", "1.2.3"),))] == 1


async def test_metrics_in_openmetrics_when_asked(server: Server) -> None:
    r = await get(server, "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


class GatedCollector:
    """A collector that takes its time, as a big registry or a slow custom collector would:
    it blocks the thread it runs in until the test opens the gate."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()

    def collect(self) -> list[Any]:
        self.started.set()
        self.gate.wait(10)  # must not be the trio thread: the loop would stop with it
        return []


async def test_a_slow_scrape_never_stalls_the_loop(server: Server) -> None:
    collector = GatedCollector()
    server.metrics.registry.register(collector)
    scraped: list[Any] = []

    async def scrape() -> None:
        scraped.append(await get(server, "/metrics"))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scrape)
            await trio.to_thread.run_sync(collector.started.wait, 10)
            # The scrape is under way and cannot end before the gate opens: a page answered
            # now was answered by a loop the scrape did not block.
            assert (await get(server, "/")).status_code == 200
            assert scraped == [] and not collector.gate.is_set()
            collector.gate.set()
    (r,) = scraped
    assert r.status_code == 200 and "maintd_safe_to_restart" in r.text


# -- /api/maintenance_mode/info (GoCD's shape) ------------------------------------------------


async def test_info_out_of_maintenance(server: Server) -> None:
    r = await get(server, "/api/maintenance_mode/info")
    assert r.status_code == 200
    info = r.json()
    assert set(info) == {"_links", "is_maintenance_mode", "metadata"}
    assert info["is_maintenance_mode"] is False
    assert info["metadata"] == {"updated_by": None, "updated_on": None}
    assert info["_links"]["self"]["href"] == f"{server.url}/api/maintenance_mode/info"  # absolute, as GoCD's
    assert info["_links"]["doc"]["href"].startswith("https://api.gocd.org/")

    await publish(server.hub, status(maintenance("normal", updated_by="root", updated_on=T0 + 1461.0)))
    info = (await get(server, "/api/maintenance_mode/info")).json()
    assert "attributes" not in info
    assert info["metadata"] == {"updated_by": "root", "updated_on": "2026-11-29T04:00:00Z"}  # GoCD's: to the second


async def test_info_in_maintenance(server: Server) -> None:
    await publish(server.hub, draining_with_work())
    info = (await get(server, "/api/maintenance_mode/info")).json()
    assert set(info) == {"_links", "is_maintenance_mode", "metadata", "attributes"}
    assert info["is_maintenance_mode"] is True
    assert info["metadata"] == {"updated_by": "root", "updated_on": "2026-11-29T03:35:42Z"}
    attrs = info["attributes"]
    assert attrs["has_running_systems"] is True
    rs = attrs["running_systems"]
    assert set(rs) >= {"material_update_in_progress", "building_jobs", "scheduled_jobs"}

    app, pipelines = rs["material_update_in_progress"]
    assert app == {
        "type": "git",
        "attributes": {
            "url": "https://git.example.com/app.git",
            "destination": None,
            "filter": None,
            "invert_filter": False,
            "name": "app",
            "auto_update": True,
            "branch": "main",
            "submodule_folder": None,
            "shallow_clone": False,
            "config_repo": False,
        },
        "mdu_start_time": "2026-11-29T03:35:39Z",
    }
    assert pipelines["attributes"]["config_repo"] is True

    unit = rs["building_jobs"][0]
    assert unit == {
        "pipeline_name": "build",
        "pipeline_counter": 7,
        "stage_name": "test",
        "stage_counter": "1",
        "name": "unit",
        "state": "Building",
        "scheduled_date": "2026-11-29T03:35:39Z",
        "agent_uuid": "agent-1",
    }
    assert [j["name"] for j in rs["building_jobs"]] == ["unit", "lint"]
    (deploy,) = rs["scheduled_jobs"]
    assert deploy["state"] == "Scheduled" and deploy["agent_uuid"] is None and deploy["stage_name"] == "ship"
    (batch,) = rs["other"]
    assert batch["id"] == "batch/7" and batch["blocks_restart"] is True


async def test_scheduled_jobs_are_not_running_systems(server: Server) -> None:
    st = status(maintenance("drained"), builtins("drained"), (scheduled(),))
    await publish(server.hub, st)
    attrs = (await get(server, "/api/maintenance_mode/info")).json()["attributes"]
    assert attrs["has_running_systems"] is False
    assert len(attrs["running_systems"]["scheduled_jobs"]) == 1
    assert attrs["running_systems"]["material_update_in_progress"] == []
    assert attrs["running_systems"]["building_jobs"] == []

    for item in (mdu(), building()):
        await publish(server.hub, status(maintenance("draining"), builtins("paused"), (item,)))
        assert (await get(server, "/api/maintenance_mode/info")).json()["attributes"]["has_running_systems"] is True
    # external work counts when it says it blocks the restart
    subs = (*builtins("drained"), sub("batch", "paused", external=True))
    await publish(server.hub, status(maintenance("draining"), subs, (external(blocks=False),)))
    assert (await get(server, "/api/maintenance_mode/info")).json()["attributes"]["has_running_systems"] is False
    await publish(server.hub, status(maintenance("draining"), subs, (external(blocks=True),)))
    assert (await get(server, "/api/maintenance_mode/info")).json()["attributes"]["has_running_systems"] is True


# -- the status page -------------------------------------------------------------------------


async def test_status_page_out_of_maintenance(server: Server) -> None:
    r = await get(server, "/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    page = r.text
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "Maintenance mode is off." in page
    assert "Safe to restart: no" in page
    assert banner_position(page) == -1
    assert "maintd 1.2.3" in page


async def test_the_banner_is_on_every_html_page_only_in_maintenance(server: Server) -> None:
    for path in ("/", "/nope"):
        assert banner_position((await get(server, path)).text) == -1, path
        assert banner_position((await get(server, path, "POST")).text) == -1, path
    await publish(server.hub, draining_with_work())
    for path in ("/", "/nope"):
        page = (await get(server, path)).text
        assert banner_position(page) > 0, path
        assert BANNER in page
    assert BANNER in (await get(server, "/", "DELETE")).text
    await publish(server.hub, status(maintenance("normal", updated_by="root", updated_on=T0 + 5061.0)))
    assert banner_position((await get(server, "/")).text) == -1


async def test_status_page_while_draining(server: Server) -> None:
    await publish(server.hub, draining_with_work())
    page = (await get(server, "/")).text
    assert "Maintenance mode is ON: draining" in page
    assert "Safe to restart: no" in page
    assert "upgrade to 2.0" in page  # why
    assert human(T0 + 1803.926) in page  # the deadline, in the server's local time
    checklist = page[page.index('id="subsystem-checklist"') :]
    checklist = checklist[: checklist.index("</ul>")]
    lines = re.findall(r'<li class="(done|waiting)" data-subsystem="([^"]+)">([^<]+)', checklist)
    assert lines == [
        ("waiting", "materials", "Waiting for material subsystem to stop.."),
        ("waiting", "config-repos", "Waiting for config repository polling to stop.."),
        ("done", "triggers", "Stopped pipeline triggers."),
        # GoCD's scheduling line waits for the building jobs, whatever the scheduler's own state
        ("waiting", "scheduler", "Waiting for building jobs to finish.."),
        ("waiting", "agents", "Waiting for agent subsystem to stop.."),
        ("done", "config", "Stopped config changes."),
        ("done", "store", "Stopped database and filesystem modifications."),
        ("waiting", "external-batch", "Waiting for external subsystem batch to stop.."),
    ]
    running = section(page, "running-stages")
    assert "build / 7 / test" in running
    for text in ("unit", "lint", "agent-1", "agent-2", "Building", "agents/job-1"):
        assert text in running, text
    mdus = section(page, "running-mdus")
    for text in ("app", "https://git.example.com/app.git (main)", "Git (config repo)", "pipelines", "2026-11-29 03:35:39 UTC"):
        assert text in mdus, text
    assert "cannot be cancelled" in mdus and "<button" not in page
    scheduled_ = section(page, "scheduled-stages")
    assert "build / 7 / ship" in scheduled_ and "deploy" in scheduled_ and "Scheduled" in scheduled_
    ext = section(page, "external")
    assert "batch/7" in ext and "sleep 30" in ext


async def test_status_page_when_drained(server: Server) -> None:
    st = status(maintenance("drained", since=T0 + 60), builtins("drained"), (scheduled(),))
    server.hub.config_repos = True
    await publish(server.hub, st)
    page = (await get(server, "/")).text
    assert "Safe to restart: yes" in page
    assert "Waiting for" not in page
    for text in (
        "Stopped material subsystem.",
        "Stopped polling on config repositories.",
        "Stopped pipeline triggers.",
        "Stopped scheduling subsystem.",
        "Stopped agent subsystem.",
        "Stopped config changes.",
        "Stopped database and filesystem modifications.",
        f"Nothing: safe to restart since {hhmm(T0 + 60)}.",
    ):
        assert text in page, text
    assert "No job is building." in page and "No material update is running." in page
    assert banner_position(page) > 0


async def test_config_repo_polling_stops_once_its_polls_are_done(server: Server) -> None:
    subs = (sub("materials", "paused", in_flight=1, blocking=1), *builtins("drained")[1:])
    await publish(server.hub, status(maintenance("draining"), subs, (mdu("app"),)))
    page = (await get(server, "/")).text
    assert "Waiting for material subsystem to stop.." in page
    # no config repo configured: no line for them (GoCD shows it only where there are some)
    assert "config repositor" not in page
    server.hub.config_repos = True
    page = (await get(server, "/")).text
    assert "Stopped polling on config repositories." in page


async def test_everything_is_escaped(server: Server) -> None:
    evil = '<script>alert("x")</script>'
    m = maintenance("draining", updated_by="<b>eve</b>", reason=evil)
    subs = (*builtins("paused"), sub("batch", "paused", external=True))
    items = (external("batch", "1", description=evil), building(job="j&<"))
    await publish(server.hub, status(m, subs, items))
    for path in ("/", "/nope"):
        page = (await get(server, path)).text
        assert "<script>" not in page and "<b>eve</b>" not in page
        assert "&lt;b&gt;eve&lt;/b&gt; turned on maintenance mode" in page
    page = (await get(server, "/")).text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page  # markupsafe writes " as &#34;
    assert "j&amp;&lt;" in page


def section(page: str, ident: str) -> str:
    start = page.index(f'<section id="{ident}">')
    return page[start : page.index("</section>", start)]


async def test_the_page_shows_the_hubs_drain_eta(server: Server) -> None:
    """The page asks the hub's foresight for the ETA at each request (the hub's status carries none)."""
    foresight = Foresight(server.hub.bridge)
    foresight.set_durations(Durations(jobs={("build", "test", "unit"): [300.0] * 5}))
    server.hub.foresight = foresight
    started = time.time() - 60
    await publish(server.hub, status(maintenance("draining"), builtins("paused"), (building(at=started),)))
    page = (await get(server, "/")).text
    assert f"Expected drained in about 4 min (p90 4 min), by {hhmm(started + 300)}." in page
    assert "expected to end about" in section(page, "running-stages")


async def test_the_help_page_the_banner_links_is_served(server: Server) -> None:
    r = await get(server, "/help")
    assert r.status_code == 200 and "What maintenance mode does" in r.text
    assert r.headers["content-type"].startswith("text/html")
