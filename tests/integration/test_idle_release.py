"""Idle release on a local event: the culler stops an idle server, the ship returns to the pool,
and the attendee's next start lands on another ship with the same files (issue 12)."""

from __future__ import annotations

import pytest

from campfleet.local import ZONE
from tests.integration.conftest import Admin, Attendee, registry_of, wait_until

pytestmark = pytest.mark.slow

IDLE_SECONDS = 30  # long enough for the first start and a file write on a busy machine


def test_idle_server_is_culled_ship_returns_and_files_follow(event_factory) -> None:
    event = event_factory(
        ships=2, heartbeat=1.0, fleet={"idleSeconds": IDLE_SECONDS, "cullEverySeconds": 2}
    )
    admin = Admin(event)
    alice = Attendee(event, "alice")
    assert alice.login().status_code == 302
    alice.start_server()
    alice.run_code("open('keep.txt', 'w').write('still here')")
    registry = registry_of(event)
    try:
        first = registry.owned_by("alice")
        volume = next(v for v in registry.volumes() if v.owner == "alice")
        assert first.volume_id == volume.volume_id

        # Nobody touches alice's server: the culler (a hub service) stops it.
        wait_until(
            lambda: "" not in admin.user("alice")["servers"],
            IDLE_SECONDS + 60,
            "the idle culler to stop alice's server",
        )
        log = (event.log_dir / "hub.log").read_text()
        assert "idle-culler" in log  # the hub started the culler service
        # The ship is free again, its volume detached and still alice's.
        freed = wait_until(
            lambda: (r := registry.get(first.ship_id)).owner is None and r.volume_id is None and r,
            30,
            "alice's ship to return to the pool",
        )
        assert freed.state.value == "available"
        assert next(v for v in registry.volumes() if v.volume_id == volume.volume_id).owner == (
            "alice"
        )

        # Someone else takes that very ship (lowest id first) ...
        bob = Attendee(event, "bob")
        assert bob.login().status_code == 302
        bob.start_server()
        assert registry.owned_by("bob").ship_id == first.ship_id

        # ... and alice comes back: another ship, in her volume's zone, with her files.
        alice.start_server()
        second = registry.owned_by("alice")
        assert second.ship_id != first.ship_id
        assert second.zone == volume.zone == ZONE
        assert second.volume_id == volume.volume_id
        assert alice.run_code("print(open('keep.txt').read())").strip() == "still here"
        assert bob.run_code("import os; print(os.path.exists('keep.txt'))").strip() == "False"
    finally:
        registry.close()
