"""Demand mode against the real mux on a local event, LocalCloud standing in for the group:
desired capacity follows logins and releases; no ship holding an attendee is chosen (issue 12)."""

from __future__ import annotations

import json

import pytest

from campfleet.protocol import ShipState
from tests.integration.conftest import Admin, Attendee, registry_of, wait_until

pytestmark = pytest.mark.slow

SPARE = 1


def test_desired_follows_logins_and_releases_and_spares_held_ships(event_factory) -> None:
    event = event_factory(
        ships=4,
        launch=0,  # no ship until the mux asks the group for one
        wait=False,
        heartbeat=1.0,
        fleet={"mode": "demand", "spareShips": SPARE, "demandInterval": 1},
    )
    event.follow_group()
    registry = registry_of(event)
    admin = Admin(event)

    def group() -> dict:
        try:
            return json.loads(event.group_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def live() -> list:
        return [r for r in registry.ships() if r.state.value in ("booting", "available", "running")]

    def settled(desired: int) -> bool:
        """The group at `desired`, that many ships live and each of them ready."""
        ships = live()
        return (
            group().get("desired") == desired
            and len(ships) == desired
            and all(r.state.value in ("available", "running") for r in ships)
        )

    try:
        # Nobody yet: the spare alone.
        wait_until(lambda: settled(SPARE), 90, f"the group to hold {SPARE} spare ship")

        # Each attendee holds one; the group grows to held + spare.
        attendees = []
        for held, name in enumerate(("alice", "bob", "carol"), start=1):
            attendee = Attendee(event, name)
            assert attendee.login().status_code == 302
            attendee.start_server()
            attendees.append(attendee)
            wait_until(lambda h=held: settled(h + SPARE), 90, f"{held} held + {SPARE} spare")
        owners = {r.ship_id: r.owner for r in registry.ships() if r.owner}
        assert sorted(owners.values()) == ["alice", "bob", "carol"]
        assert group()["remove"] == []

        # alice and carol stop: their ships return to the pool and the group shrinks to
        # 1 held + 1 spare, removing only free ships; bob's is never one of them.
        bob_ship = registry.owned_by("bob").ship_id
        for name in ("alice", "carol"):
            assert admin.api("DELETE", f"/users/{name}/server").status_code in (202, 204)
        wait_until(lambda: settled(1 + SPARE), 90, "the group to shrink to 1 held + 1 spare")
        removed = group()["remove"]
        assert len(removed) == 2 and bob_ship not in removed
        for ship_id in removed:
            record = registry.get(ship_id)
            assert record.owner is None
            wait_until(
                lambda s=ship_id: registry.get(s).state == ShipState.TERMINATED,
                30,
                f"{ship_id} to report terminated",
            )
        assert registry.owned_by("bob").ship_id == bob_ship
        assert admin.server_ready("bob")
        assert attendees[1].server_get("api/status").status_code == 200

        # alice comes back: a ship for her (the spare), and the group grows again.
        attendees[0].start_server()
        assert registry.owned_by("alice").ship_id not in removed
        wait_until(lambda: settled(2 + SPARE), 90, "2 held + 1 spare")
        assert bob_ship not in group()["remove"]
    finally:
        registry.close()
