"""The organizer's fleet page in a real browser on a real local event: numbers, open the gate,
start a redeploy from the form and watch it finish."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.slow


def test_fleet_page_opens_the_gate_and_redeploys(browser, event) -> None:
    page = browser.new_page()
    base = event.url.rstrip("/")
    page.goto(f"{base}/hub/login")
    page.fill("#username_input", event.admin)
    page.fill("#password_input", event.admin_password)
    page.click("#login_submit")
    page.wait_for_url(f"{base}/hub/fleet")  # organizers land on the fleet page
    page.click(".navbar-nav >> text=Home")
    page.click("#campfleet-nav-fleet")  # and find it in the hub's navigation bar
    page.wait_for_url(f"{base}/hub/fleet")
    assert "1 of 1 ships ready, 1 needed (100%)" in page.inner_text("#gate-status")
    assert page.query_selector("#open-gate") is None  # the gate is already open

    page.fill("#redeploy-image", "Not A Ref")
    page.click("#redeploy-form button")
    page.wait_for_function("document.getElementById('redeploy-message').textContent !== ''")
    assert "is not a valid image reference" in page.inner_text("#redeploy-message")

    page.fill("#redeploy-image", "campfleet/ship:v2")
    page.fill("#redeploy-batch", "1")
    page.click("#redeploy-form button")
    page.wait_for_selector("#redeploy-progress")
    page.wait_for_function(
        "document.getElementById('redeploy-progress').textContent.includes('done')",
        timeout=60_000,
    )  # the page reloads itself every 5 s
    assert re.search(r"Rollout 1 to\s+campfleet/ship:v2", page.inner_text("#redeploy-progress"))
    assert page.inner_text("#ship-image") == "campfleet/ship:v2"
