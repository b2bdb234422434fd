"""Issue 13: an attendee takes their work home — "Download my files" on the hub's home page."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tests.e2e.jupyterlab import log_in

pytestmark = pytest.mark.slow

WORK = "print('my homework')\n"


def test_download_my_files_returns_a_zip_with_what_the_attendee_wrote(
    browser, event, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(60_000)
    page.goto(event.url)
    log_in(page, "alice", event.password)

    # The attendee saves a file through the contents API Lab's editor uses, with the browser's
    # own cookies; from the test's side, so a Lab navigation cannot abort it mid-flight.
    xsrf = next(
        c["value"]
        for c in page.context.cookies()
        if c["name"] == "_xsrf" and c["path"].startswith("/user/alice")
    )
    answer = page.context.request.put(
        event.url.rstrip("/") + "/user/alice/api/contents/homework.py",
        headers={"Content-Type": "application/json", "X-XSRFToken": xsrf},
        data=json.dumps({"type": "file", "format": "text", "content": WORK}),
    )
    assert answer.status in (200, 201), answer.text()

    page.goto(event.url.rstrip("/") + "/hub/home")
    link = page.locator("#download-files")
    assert link.inner_text() == "Download my files"
    with page.expect_download() as info:
        link.click()
    saved = tmp_path / "my-files.zip"
    info.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        names = archive.namelist()
        [homework] = [n for n in names if n.endswith("/homework.py")]
        assert archive.read(homework).decode() == WORK
    assert info.value.suggested_filename.endswith(".zip")
