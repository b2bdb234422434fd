"""The whole mux on loopback: login form → ship → JupyterLab server → kernel → volume file.

Real hub, configurable-http-proxy, control API and local agents running the real
jupyterhub-singleuser. Also the refusals: wrong password, someone else's name, forged control
messages — each refused with nothing changed.
"""

from __future__ import annotations

import hmac
import json
import time

import pytest
import requests

from campfleet.protocol import Report, ShipState, encode_report
from tests.integration.conftest import Admin, Attendee, registry_of, wait_until

pytestmark = pytest.mark.slow


def test_login_start_kernel_and_file_on_the_volume(event_factory) -> None:
    event = event_factory(ships=2, heartbeat=1.0)
    alice = Attendee(event, "alice")
    r = alice.login()
    assert r.status_code == 302, r.text
    alice.start_server()

    status = alice.server_get("api/status")
    assert status.status_code == 200, status.text
    assert "last_activity" in status.json()
    lab = alice.server_get("lab")
    assert lab.status_code == 200 and "JupyterLab" in lab.text

    out = alice.run_code(
        "import os\nopen('notes.txt', 'w').write('written by alice')\nprint(os.getcwd())"
    )
    registry = registry_of(event)
    try:
        ship = registry.owned_by("alice")
        volume = next(v for v in registry.volumes() if v.owner == "alice")
    finally:
        registry.close()
    volume_dir = event.volumes_root / volume.volume_id
    assert out.strip() == str(volume_dir)
    assert (volume_dir / "notes.txt").read_text() == "written by alice"
    assert ship.volume_id == volume.volume_id and ShipState(ship.state) == ShipState.RUNNING
    assert ship.container("").state == "running"


def test_refusals_change_nothing(event_factory) -> None:
    event = event_factory(ships=2, heartbeat=1.0)
    admin = Admin(event)

    wrong = Attendee(event, "mallory")
    r = wrong.login(password="not-the-password")
    assert r.status_code == 403 and "Invalid username or password" in r.text
    assert admin.api("GET", "/users/mallory").status_code == 404

    alice = Attendee(event, "alice")
    assert alice.login().status_code == 302
    alice.start_server()
    assert alice.server_get("api/status").status_code == 200
    metrics = requests.get(f"{admin.base}/hub/metrics", timeout=30)
    assert metrics.status_code == 403  # metrics need a token with read:metrics
    metrics = admin.http.get(f"{admin.base}/hub/metrics", timeout=30)
    assert metrics.status_code == 200 and "jupyterhub_running_servers" in metrics.text
    impostor = Attendee(event, "alice")
    r = impostor.login()
    assert r.status_code == 403 and "already in use" in r.text
    assert "jupyterhub-hub-login" not in impostor.http.cookies
    assert alice.login().status_code == 302  # the same browser may log in again
    assert admin.server_ready("alice")

    registry = registry_of(event)
    try:
        ship = registry.owned_by("alice")
        before = (registry.get(ship.ship_id), registry.counts())
        # Even the fleet secret itself (the mux's only) no longer signs for a ship: each key
        # is derived with a random salt issued at the ship's attestation (issue 15).
        fleet_secret = (event.state_dir / "secrets" / "fleet-secret").read_text().strip()
        message = b"campfleet-ship-key:" + ship.ship_id.encode()
        forged_key = hmac.digest(fleet_secret.encode(), message, "sha256")
        report = Report(ship_id=ship.ship_id, zone=ship.zone, address=ship.address,
                        port_base=ship.port_base, state=ShipState.FAILED, error="forged",
                        seq=ship.seq + 1000, ts=time.time())  # fmt: skip
        body, headers = encode_report(report, forged_key)
        control = f"http://127.0.0.1:{event.control_port}/v1/report"
        r = requests.post(control, data=body, headers=headers, timeout=10)
        assert r.status_code == 401 and json.loads(r.text)["error"] == "forged"
        r = requests.post(control, data=b"{not json", headers=headers, timeout=10)
        assert r.status_code in (400, 401)
        after = (registry.get(ship.ship_id), registry.counts())
        assert after[0].state == before[0].state and after[0].error == before[0].error
        assert after[1] == before[1]
    finally:
        registry.close()
    assert alice.server_get("api/status").status_code == 200

    # Alice switched browser: an organizer frees her name by deleting the hub user; her ship
    # and home volume live in the registry, so the new browser lands on the same ship.
    assert admin.api("DELETE", "/users/alice/server").status_code in (202, 204)
    wait_until(lambda: not admin.user("alice")["servers"], 60, "alice's server to stop")
    assert admin.api("DELETE", "/users/alice").status_code == 204
    new_browser = Attendee(event, "alice")
    assert new_browser.login().status_code == 302
    new_browser.start_server()
    assert new_browser.server_get("api/status").status_code == 200
    registry = registry_of(event)
    try:
        assert registry.owned_by("alice").ship_id == ship.ship_id
    finally:
        registry.close()
