"""The status page in headless Chromium during maintenance: the banner is rendered near the footer.

The HTTP server runs in this test's trio loop with a hub fed a synthetic draining status;
Chromium (Debian's ``chromium``) loads it over a real socket, prints the rendered DOM and
takes a screenshot. ``MAINTD_UPDATE_SCREENSHOT=1`` also writes it to docs/status-page.png.
Under CI a missing chromium fails the test; elsewhere it is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry

from daemon.bridge import Bridge
from daemon.http import serve_http
from daemon.hub import StatusHub
from daemon.metrics import Metrics
from daemon.status_page import HELP_PATH
from daemon.times import human
from tests.conftest import ROOT
from tests.synthetic import T0, draining_with_work, need_tool, publish

#: in the server's local time, with its zone
BANNER = f"root turned on maintenance mode at {human(T0 + 3.926)}."
PNG = b"\x89PNG\r\n\x1a\n"


def chromium_argv(chromium: str, profile: Path, *extra: str) -> list[str]:
    return [
        chromium,
        "--headless",
        "--no-sandbox",  # as root (CI); the page is ours, on loopback
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *extra,
    ]


@pytest.fixture
def chromium() -> str:
    # a sync fixture: pytest's skip and fail keep their message (inside a trio test they come wrapped in a group)
    return need_tool("chromium", "chromium-browser", package="chromium")


async def test_the_banner_renders_after_the_main_content(tmp_path: Path, chromium: str) -> None:
    hub = StatusHub(Bridge(trio.lowlevel.current_trio_token()), on_fatal=lambda error: None)
    metrics = Metrics(CollectorRegistry(), version="0.1.0")
    hub.listeners.append(metrics.update)
    status = draining_with_work()
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(serve_http, "127.0.0.1:0", hub, metrics)
        await publish(hub, status)
        url = f"http://127.0.0.1:{port}/"
        with trio.fail_after(120):
            dom = await trio.run_process(
                chromium_argv(chromium, tmp_path / "profile-dom", "--dump-dom", url),
                capture_stdout=True,
                capture_stderr=True,
            )
            shot = tmp_path / "status-page.png"
            await trio.run_process(
                chromium_argv(chromium, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1200,1600", url),
                capture_stdout=True,
                capture_stderr=True,
            )
        nursery.cancel_scope.cancel()

    html = dom.stdout.decode()
    assert "Maintenance mode is ON: draining" in html, dom.stderr.decode()[-2000:]
    banner = re.search(r'<div id="maintenance-banner"[^>]*><span id="banner-text">([^<]*)</span> <a href="([^"]*)">', html)
    assert banner is not None, "no banner in the rendered DOM"
    assert banner.group(1).strip() == BANNER
    assert banner.group(2) == HELP_PATH
    main_end, footer = html.rfind("</main>"), html.find("<footer")
    assert 0 < main_end < banner.start() < footer, "the banner sits after the main content, just before the footer"
    assert not html[main_end + len("</main>") : banner.start()].strip(), "nothing between the main content and the banner"
    for panel in ("running-stages", "running-mdus", "scheduled-stages", "subsystem-checklist", "why"):
        assert f'id="{panel}"' in html, panel
    assert "Waiting for building jobs to finish.." in html  # GoCD's scheduling line, while jobs build
    assert "Stopped pipeline triggers." in html
    assert "<code>maintctl cancel agents/job-1</code>" in html  # the why section's cancel command

    data = shot.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000, "chromium wrote no screenshot"
    if os.environ.get("MAINTD_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "status-page.png")
