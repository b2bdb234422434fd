"""A whole room starts at once: the gate holds until readyPercent, then no ship goes to two."""

from __future__ import annotations

import json
import threading

import pytest

from tests.integration.conftest import STANDIN, Admin, registry_of, wait_until

pytestmark = pytest.mark.slow


def test_room_waits_at_the_gate_then_every_attendee_gets_their_own_ship(event_factory) -> None:
    event = event_factory(ships=8, launch=4, wait=False, heartbeat=1.0, singleuser_cmd=STANDIN)
    wait_until(lambda: event.counts().get("available") == 4, 120, "4 ships available")
    admin = Admin(event)
    names = [f"attendee{i}" for i in range(8)]
    assert admin.api("POST", "/users", json={"usernames": names}).status_code == 201

    answers: dict[str, int] = {}

    def start(name: str) -> None:
        answers[name] = admin.api("POST", f"/users/{name}/server").status_code

    threads = [threading.Thread(target=start, args=(n,)) for n in names]
    for t in threads:
        t.start()
    first = []
    with admin.http.get(
        f"{admin.base}/hub/api/users/{names[0]}/server/progress", stream=True, timeout=60
    ) as r:
        for line in r.iter_lines():
            if line.startswith(b"data:"):
                first.append(json.loads(line[5:])["message"])
                if len(first) == 2:
                    break
    assert first[1] == "waiting for a ship: 4 of 8 ready (the room opens at 8)"
    registry = registry_of(event)
    try:
        assert all(registry.owned_by(n) is None for n in names)  # the gate holds

        for index, ship_id in enumerate(event.ship_ids()[4:], start=4):
            event.start_ship(ship_id, index)
        for t in threads:
            t.join(timeout=120)
        assert set(answers.values()) <= {201, 202}
        wait_until(lambda: all(admin.server_ready(n) for n in names), 120, "all servers ready")

        owners = {n: registry.owned_by(n).ship_id for n in names}
        assert len(set(owners.values())) == 8  # no ship handed to two attendees
        assert sorted(s.owner for s in registry.ships()) == sorted(names)
        volumes = [v.volume_id for v in registry.volumes() if v.owner]
        assert len(set(volumes)) == 8
    finally:
        registry.close()
    for name in names:
        r = admin.server_get(name, "api/status")
        assert r.status_code == 200 and r.json() == {"standin": True}
