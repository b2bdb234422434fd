"""A hub restart (cleanup_servers=False) keeps every attendee on their ship and server."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Admin, Attendee, registry_of

pytestmark = pytest.mark.slow


def test_restart_the_hub_everyone_still_reaches_their_server(event_factory) -> None:
    event = event_factory(ships=3, heartbeat=1.0, lost_after=5)
    admin = Admin(event)
    attendees = [Attendee(event, name) for name in ("alice", "bob")]
    for a in attendees:
        assert a.login().status_code == 302
        a.start_server()
        assert a.server_get("api/status").status_code == 200
    registry = registry_of(event)
    try:
        ships = {a.name: registry.owned_by(a.name).ship_id for a in attendees}
        pids = {n: registry.get(s).containers[0].port for n, s in ships.items()}

        event.restart_hub()
        event.wait_ready(timeout=120)

        for a in attendees:
            assert admin.server_ready(a.name)
            assert a.server_get("api/status").status_code == 200  # same browser session
            assert registry.owned_by(a.name).ship_id == ships[a.name]
            assert registry.get(ships[a.name]).containers[0].port == pids[a.name]
    finally:
        registry.close()
