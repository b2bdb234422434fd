"""The Fleet the ShipSpawner relies on: gate, image, health marking, wake-ups."""

from __future__ import annotations

import asyncio
from pathlib import Path

from campfleet.mux.cloud import LocalCloud
from campfleet.mux.fleet import Fleet
from campfleet.mux.registry import Registry
from campfleet.protocol import ShipState
from tests.unit.test_spawner import FakeAgents, NoControl, ships


def make_fleet(tmp_path: Path, registry: Registry) -> Fleet:
    return Fleet(
        registry,
        LocalCloud(tmp_path / "volumes", 2),
        NoControl(),
        expected=4,
        ready_percent=50,
        ship_image="ship:1",
        state_file=tmp_path / "fleet.json",
    )


async def test_gate_and_image_decisions_survive_a_restart(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    fleet = make_fleet(tmp_path, registry)
    assert not fleet.readiness().open
    fleet.open_gate()
    fleet.set_ship_image("ship:2")
    registry.close()

    registry = Registry(tmp_path / "r.sqlite")
    again = make_fleet(tmp_path, registry)
    assert again.gate_latched  # before any count: starts skip the gate
    r = again.readiness()
    assert r.open and (r.ready, r.needed) == (0, 2) and again.gate_forced
    assert again.ship_image == "ship:2"
    registry.close()


async def test_gate_latches_once_reached(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    fleet = make_fleet(tmp_path, registry)
    await fleet.start()
    assert not fleet.gate_latched
    agents = FakeAgents(registry)
    ids = ships(agents, 2)
    assert fleet.readiness().open and not fleet.gate_forced and fleet.gate_latched
    registry.mark_lost(now=1e12)  # both ships go silent
    await asyncio.sleep(0.05)
    assert fleet.readiness().ready == 0 and fleet.readiness().open  # moved attendees may start
    assert sorted(fleet.cloud.unhealthy) == ids
    fleet.stop()
    registry.close()


async def test_failed_ship_is_marked_unhealthy_once_and_watchers_wake(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    fleet = make_fleet(tmp_path, registry)
    await fleet.start()
    agents = FakeAgents(registry)
    (ship_id,) = ships(agents, 1)
    seen: list[str] = []
    fleet.watch(ship_id, lambda: seen.append(registry.get(ship_id).state.value))
    waiter = asyncio.ensure_future(
        fleet.wait_for(lambda: registry.get(ship_id).state == ShipState.FAILED, 5, ship_id)
    )
    await asyncio.sleep(0)
    agents.report(ship_id, ShipState.FAILED)
    assert await asyncio.wait_for(waiter, 1)
    agents.report(ship_id, ShipState.FAILED)  # a heartbeat of the same failure
    await asyncio.sleep(0.05)
    unhealthy = [c for c in fleet.cloud.calls if c.action == "unhealthy"]
    assert [c.target for c in unhealthy] == [ship_id]
    assert seen == ["failed"]
    fleet.stop()
    registry.close()
