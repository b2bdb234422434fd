"""The control channel across a mux outage and restart: ships keep serving, nothing is lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from campfleet.protocol import ShipState
from tests.integration.test_agent_local import (
    LOST_AFTER,
    Agents,
    Mux,
    free_port,
    get,
    server_spec,
    wait_for,
)

HEARTBEAT = 1.0  # the lost window (3 s) scaled down 5x, with room for a loaded 2-core CI machine


@pytest.mark.slow
def test_mux_restart_keeps_every_ship_and_claim(tmp_path: Path) -> None:
    mux = Mux(tmp_path, heartbeat=HEARTBEAT)
    agents = Agents(tmp_path, mux)
    try:
        for n in range(3):
            agents.start(f"i-{n:08x}")
        for n in range(3):
            mux.wait_state(f"i-{n:08x}", ShipState.AVAILABLE)
        claimed = mux.registry.claim("alice")
        mux.registry.set_volume(claimed.ship_id, "vol-alice")
        port = free_port()
        gen = mux.registry.set_container(claimed.ship_id, server_spec(port, "v1"))
        mux.wait_container(claimed.ship_id, gen)
        before = {r.ship_id: (r.state, r.owner, r.desired) for r in mux.registry.ships()}
        pid_before = get(port)

        mux.stop()  # the hub goes away: agents back off but keep serving
        outage = time.monotonic()
        while time.monotonic() - outage < HEARTBEAT * (LOST_AFTER + 3):
            assert get(port) == pid_before
            time.sleep(0.1)

        mux.start()  # same file, same port
        after = {r.ship_id: (r.state, r.owner, r.desired) for r in mux.registry.ships()}
        assert after == before
        restarted = time.time()
        wait_for(
            lambda: all(r.last_seen > restarted for r in mux.registry.ships()),
            HEARTBEAT * LOST_AFTER,  # every ship is heard from again before it could be lost
            "every ship to report to the restarted mux",
        )
        time.sleep(HEARTBEAT * (LOST_AFTER + 2))  # past the grace period: still nobody lost
        states = {r.ship_id: r.state for r in mux.registry.ships()}
        assert states == {s: v[0] for s, v in before.items()}, states
        assert mux.registry.owned_by("alice").ship_id == claimed.ship_id
        assert get(port) == pid_before  # never restarted
        gen = mux.registry.set_container(claimed.ship_id, server_spec(port, "v2"))
        mux.wait_container(claimed.ship_id, gen)  # and still takes orders
        wait_for(lambda: (get(port) or "").endswith("|v2"), 10, "redeploy after restart")
        assert mux.server.rejections == dict.fromkeys(mux.server.rejections, 0)
    finally:
        agents.close()
        if mux.registry is not None:
            mux.stop()
