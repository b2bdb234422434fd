"""Faults on loopback: a ship dies under an attendee; the attendee moves with their files."""

from __future__ import annotations

import pytest

from campfleet.protocol import ShipState
from tests.integration.conftest import Admin, Attendee, registry_of, wait_until

pytestmark = pytest.mark.slow


def test_dead_ship_is_reported_gone_and_restart_moves_with_the_files(event_factory) -> None:
    event = event_factory(ships=3, heartbeat=1.0, lost_after=3)
    admin = Admin(event)
    alice = Attendee(event, "alice")
    assert alice.login().status_code == 302
    alice.start_server()
    assert alice.server_get("api/status").status_code == 200
    alice.run_code("open('keep.txt', 'w').write('still here')")
    registry = registry_of(event)
    try:
        first = registry.owned_by("alice")
        volume = next(v for v in registry.volumes() if v.owner == "alice")

        event.kill_ship(first.ship_id)  # agent and notebook server SIGKILLed
        wait_until(lambda: "" not in admin.user("alice")["servers"], 30, "the hub to drop alice")
        assert ShipState(registry.get(first.ship_id).state) == ShipState.LOST
        log = (event.log_dir / "hub.log").read_text()
        assert f"ship {first.ship_id} is lost" in log  # Fleet asked the cloud to replace it

        alice.start_server()
        second = registry.owned_by("alice")
        assert second.ship_id != first.ship_id
        assert second.zone == first.zone and second.volume_id == volume.volume_id
        assert alice.run_code("print(open('keep.txt').read())").strip() == "still here"
        assert registry.get(first.ship_id).owner is None
    finally:
        registry.close()
