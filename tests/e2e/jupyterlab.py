"""What an attendee does in the browser, shared by the browser tests: log in, open a notebook
in JupyterLab, run a cell and see its output."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import TimeoutError as PlaywrightTimeout


def log_in(page: Any, name: str, password: str) -> None:
    """The hub's login form, then JupyterLab opening on the attendee's own server."""
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url(f"**/user/{name}/lab**")


def run_in_new_notebook(page: Any, code: str, expected: str) -> None:
    """Open a notebook from the launcher, type `code` into its first cell and run it until
    `expected` is in its output."""
    page.locator(".jp-LauncherCard[data-category='Notebook']").first.click()
    cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    cell.wait_for()
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()
    cell.click()
    page.keyboard.type(code)
    output = page.locator(".jp-OutputArea-output").filter(has_text=expected)
    # JupyterLab may drop a run requested while its fresh kernel connection settles (the cell
    # stays "[ ]"); an attendee presses run again, and so does this.
    for attempt in range(3):
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.keyboard.press("Shift+Enter")
        try:
            output.wait_for(timeout=20_000)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise
