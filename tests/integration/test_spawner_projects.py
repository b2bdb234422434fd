"""Projects (named servers) on real local ships: a broken project fails only its own spawn."""

from __future__ import annotations

import json
import sys

import pytest

from campfleet.protocol import ShipState
from tests.integration.conftest import STANDIN, Admin, registry_of, wait_until

pytestmark = pytest.mark.slow

BROKEN = [sys.executable, "-c", "import sys; sys.exit('init.sh: tutorial data missing')"]


def progress(admin: Admin, path: str) -> list[dict]:
    events = []
    with admin.http.get(f"{admin.base}/hub/api{path}/progress", stream=True, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith(b"data:"):
                events.append(json.loads(line[5:]))
                if events[-1].get("ready") or events[-1].get("failed"):
                    break
    return events


def test_broken_project_fails_with_its_own_error_ship_and_others_keep_running(
    event_factory,
) -> None:
    projects = {
        "broken": {"image": "tutorial-broken:1", "cmd": BROKEN},
        "intro": {"image": "tutorial-intro:1", "cmd": STANDIN},
    }
    event = event_factory(ships=2, heartbeat=1.0, singleuser_cmd=STANDIN, projects=projects)
    admin = Admin(event)
    assert admin.api("POST", "/users", json={"usernames": ["alice"]}).status_code == 201
    assert admin.api("POST", "/users/alice/server").status_code in (201, 202)
    wait_until(lambda: admin.server_ready("alice"), 60, "alice's default server")

    r = admin.api("POST", "/users/alice/servers/broken")
    if r.status_code == 202:  # still starting when the hub answered: follow the progress
        events = progress(admin, "/users/alice/servers/broken")
        assert events[-1].get("failed"), events
        message = events[-1]["message"]
    else:  # it failed before the hub answered
        assert r.status_code == 503, r.text
        message = r.json()["message"]
    assert "project broken failed to start" in message
    assert "init.sh: tutorial data missing" in message

    r = admin.api("POST", "/users/alice/servers/intro")
    assert r.status_code in (201, 202), r.text
    wait_until(lambda: admin.user("alice")["servers"].get("intro", {}).get("ready"), 60, "intro")
    assert admin.server_get("alice", "intro/api/status").json() == {"standin": True}
    assert admin.server_ready("alice")  # the default server never noticed
    registry = registry_of(event)
    try:
        ship = registry.owned_by("alice")
        assert ShipState(ship.state) == ShipState.RUNNING and not ship.error
        assert sorted(c.name for c in ship.desired.containers) == ["", "intro"]
        assert {c.name: c.state for c in ship.containers} == {"": "running", "intro": "running"}
    finally:
        registry.close()
