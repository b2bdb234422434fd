"""Browser tests: Debian's chromium driven by playwright against a real local event."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from campfleet.local import LocalEvent
from tests.docker_kit import SCOPE_PREFIX
from tests.integration.conftest import make_event, stop_and_check

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def trusting_home(home: Path, ca_file: Path) -> Path:
    """A HOME whose NSS database (what Chromium on Linux trusts) holds Pebble's root."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True)
    subprocess.run(
        ["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "pebble", "-i", str(ca_file)],
        check=True,
    )
    return home


@pytest.fixture
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=60_000
            )
        except Error as e:
            pytest.skip(f"chromium cannot start: {str(e).splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def event(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalEvent]:
    """The event on both runtimes: server processes, and real containers of the ship image."""
    docker = {}
    if request.param == "docker":
        images = request.getfixturevalue("docker_images")
        docker = {"runtime": "docker", "ship_image": images["ship"]}
        docker["docker_scope"] = f"{SCOPE_PREFIX}e2e"
    event = make_event(tmp_path, ships=1, heartbeat=1.0, **docker)
    try:
        event.start()
        event.wait_ready(timeout=300)
        yield event
    finally:
        stop_and_check(event)
        assert event.containers() == []
