"""HTTPS in a real browser: Chromium, trusting only Pebble's root (its own NSS database, no
"ignore certificate errors"), logs in to `campfleet local --tls` and runs a cell over wss://."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from campfleet.local import LocalEvent
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, trusting_home
from tests.e2e.jupyterlab import log_in, run_in_new_notebook
from tests.integration.conftest import make_event, stop_and_check

pytestmark = pytest.mark.slow


@pytest.fixture
def tls_event(tmp_path: Path) -> Iterator[LocalEvent]:
    for tool in ("nginx", "pebble", "certutil"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} not installed (scripts/system-deps.sh installs it)")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed (apt-get install chromium)")
    event = make_event(tmp_path, ships=1, heartbeat=1.0, tls=True)
    try:
        event.start()
        event.wait_ready(timeout=180)
        yield event
    finally:
        stop_and_check(event)


def test_login_over_https_and_run_a_cell_over_wss(tls_event: LocalEvent, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    home = trusting_home(tmp_path / "home", tls_event.ca_file)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
            timeout=60_000,
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(60_000)
            sockets: list[str] = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            page.goto(tls_event.url)  # a certificate error would raise here
            assert page.url.startswith(f"https://localhost:{tls_event.port}/hub/login")
            log_in(page, "alice", tls_event.password)
            run_in_new_notebook(page, "print('over', 'wss', 6 * 7)", "over wss 42")
            kernel_sockets = [u for u in sockets if "/api/kernels/" in u]
            wss = f"wss://localhost:{tls_event.port}/user/alice/"
            assert kernel_sockets and all(u.startswith(wss) for u in kernel_sockets), sockets
        finally:
            browser.close()
