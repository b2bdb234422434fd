"""An attendee's whole path in a real browser: login page → JupyterLab → run a cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.jupyterlab import log_in, run_in_new_notebook

pytestmark = pytest.mark.slow


def test_login_land_in_jupyterlab_and_run_a_cell(browser, event, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(60_000)
    page.goto(event.url)
    log_in(page, "alice", event.password)
    shot = tmp_path / "jupyterlab.png"
    try:
        run_in_new_notebook(page, "print('campfleet', 6 * 7)", "campfleet 42")
    finally:
        page.screenshot(path=str(shot))  # also when it fails: what the attendee saw
    assert shot.stat().st_size > 10_000
    if event.runtime == "docker":  # the cell ran in alice's container of the ship image
        assert len(event.containers()) == 1
    print(f"screenshot: {shot}")
