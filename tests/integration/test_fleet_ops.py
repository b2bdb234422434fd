"""Fleet operations on a real local event: the fleet page and API through the proxy, and a
rolling redeploy driven by `campfleet redeploy` that restarts the attendee's server on the new
image while the files on their volume stay."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.conftest import Admin, Attendee, registry_of, wait_until

pytestmark = pytest.mark.slow

NEW = "campfleet/ship:v2"


def campfleet(event, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPFLEET_")}
    env.update(CAMPFLEET_URL=event.url, CAMPFLEET_TOKEN=event.api_token, NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-c", "from campfleet.cli import main; raise SystemExit(main())", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_redeploy_keeps_files_and_changes_what_runs(event_factory) -> None:
    event = event_factory(ships=2, heartbeat=1.0)
    admin = Admin(event)
    alice = Attendee(event, "alice")
    assert alice.login().status_code == 302
    alice.start_server()
    before = alice.server_get("api/status")
    assert before.status_code == 200, before.text
    alice.run_code("open('notes.txt', 'w').write('kept across the redeploy')")

    fleet = admin.api("GET", "/fleet").json()
    ship_id = next(s["id"] for s in fleet["ships"] if s["attendee"] == "alice")
    old = next(s for s in fleet["ships"] if s["id"] == ship_id)["containers"][0]
    assert old["state"] == "running" and old["image"] == fleet["shipImage"] != NEW

    result = campfleet(event, "redeploy", "--image", NEW, "--batch", "1", "--interval", "0.5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Rollout 1: {NEW} to 1 ships, 1 at a time (replacing {old['image']})" in result.stdout
    assert result.stdout.splitlines()[-1] == f"rollout 1 to {NEW} done: 1 of 1 ships done"

    registry = registry_of(event)
    try:
        ship = registry.get(ship_id)
        volume = next(v for v in registry.volumes() if v.owner == "alice")
    finally:
        registry.close()
    new = ship.container("")
    assert (new.image, new.state) == (NEW, "running")
    assert new.digest != old["digest"]  # a different thing runs now
    assert ship.owner == "alice" and ship.volume_id == volume.volume_id
    assert (event.volumes_root / volume.volume_id / "notes.txt").read_text() == (
        "kept across the redeploy"
    )
    # The same attendee reaches a freshly started server and reads the file written before.
    after = wait_until(
        lambda: (r := alice.server_get("api/status")).status_code == 200 and r, 60, "server"
    )
    assert after.json()["started"] != before.json()["started"]
    assert alice.run_code("print(open('notes.txt').read())").strip() == "kept across the redeploy"

    # Spawns from now on get the new image.
    bob = Attendee(event, "bob")
    assert bob.login().status_code == 302
    bob.start_server()
    fleet = admin.api("GET", "/fleet").json()
    bob_ship = next(s for s in fleet["ships"] if s["attendee"] == "bob")
    assert bob_ship["containers"][0]["image"] == NEW and fleet["shipImage"] == NEW

    status = campfleet(event, "status")
    assert status.returncode == 0, status.stderr
    assert f"ship image {NEW} · 2 attendees" in status.stdout
    assert f"Last rollout: rollout 1 to {NEW} done: 1 of 1 ships done" in status.stdout


def test_fleet_page_is_served_through_the_proxy_for_the_admin_only(event_factory) -> None:
    event = event_factory(ships=1, heartbeat=1.0)
    organizer = Attendee(event, event.admin)
    assert organizer.login(password=event.admin_password).status_code == 302
    page = organizer.http.get(f"{event.url.rstrip('/')}/hub/fleet", timeout=30)
    assert page.status_code == 200
    assert "1 of 1 ships ready, 1 needed (100%)" in page.text
    assert 'id="jupyterhub-logo"' in page.text

    alice = Attendee(event, "alice")
    assert alice.login().status_code == 302
    assert alice.http.get(f"{event.url.rstrip('/')}/hub/fleet", timeout=30).status_code == 403
    r = alice.http.get(f"{event.url.rstrip('/')}/hub/api/fleet", timeout=30)
    assert r.status_code == 403
