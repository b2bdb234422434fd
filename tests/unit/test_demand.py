"""The mux's demand loop, one step at a time, over a real registry and LocalCloud (issue 12)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from campfleet.fleetpolicy import Policy
from campfleet.mux.cloud import LocalCloud
from campfleet.mux.demand import DemandController, observe
from campfleet.mux.registry import Registry
from campfleet.protocol import Report, ShipState

S = ShipState
_seq = itertools.count(1)


def report(reg: Registry, ship_id: str, state: ShipState, zone: str = "a") -> None:
    """A ship's reports up to `state` (booting first, as an agent does)."""
    for step in (S.BOOTING, state) if state is not S.BOOTING else (S.BOOTING,):
        reg.apply_report(Report(ship_id, zone, "127.0.0.1", 8888, step, seq=next(_seq), ts=0))


@pytest.fixture
def world(tmp_path: Path):
    reg = Registry(tmp_path / "registry.sqlite")
    cloud = LocalCloud(tmp_path / "volumes", 0, group_file=tmp_path / "group.json")
    fleet = SimpleNamespace(registry=reg, cloud=cloud, waiting=set())
    controller = DemandController(fleet, Policy(ships=6, mode="demand", spare_ships=1))
    yield reg, cloud, fleet, controller, tmp_path / "group.json"
    reg.close()


def group(path: Path) -> dict:
    return json.loads(path.read_text())


async def test_grows_for_holders_and_waiters_and_removes_only_free_ready_ships(world) -> None:
    reg, _cloud, fleet, controller, path = world
    assert await controller.step() == 1  # nobody: the spare
    for ship in ("i-1", "i-2", "i-3", "i-4"):
        report(reg, ship, S.AVAILABLE)
    reg.claim("ann")
    reg.claim("bob")
    fleet.waiting.add("cy")
    # First step saw 1; now 4 live: never below what runs, then held 2 + waiting 1 + spare 1.
    assert await controller.step() == 4
    assert group(path) == {"desired": 4, "remove": []}
    fleet.waiting.clear()  # cy gave up: 2 held + 1 spare, one free ship goes
    assert await controller.step() == 3
    removed = group(path)["remove"]
    assert len(removed) == 1 and removed[0] in ("i-3", "i-4")
    assert reg.get(removed[0]).desired.drain  # nobody can claim it on its way out
    held = {reg.owned_by(n).ship_id for n in ("ann", "bob")}
    assert not held & set(removed)
    assert group(path)["desired"] == 3


async def test_a_busy_free_ship_is_not_removed(world) -> None:
    reg, _cloud, _fleet, controller, path = world
    await controller.step()
    for ship in ("i-1", "i-2"):
        report(reg, ship, S.AVAILABLE)
    reg.set_volume("i-1", "vol-1")  # still detaching an attendee's volume: busy
    counts, _ships = observe(reg.ships(), launching=0, waiting=0)
    assert (counts.held, counts.starting, counts.available) == (0, 1, 1)
    controller.target = None  # a mux restart: adopts the 2 ships that run, then shrinks
    assert await controller.step() == 1
    assert group(path)["remove"] == ["i-2"]


async def test_a_failed_removal_leaves_the_ship_claimable(world, monkeypatch) -> None:
    reg, cloud, _fleet, controller, _path = world
    await controller.step()
    for ship in ("i-1", "i-2", "i-3"):
        report(reg, ship, S.AVAILABLE)

    async def refuse(ship_id: str) -> None:
        raise RuntimeError("AWS said no")

    monkeypatch.setattr(cloud, "remove_ship", refuse)
    controller.target = None  # a mux restart: adopts the 3 ships that run, then shrinks
    with pytest.raises(RuntimeError):
        await controller.step()
    assert not any(reg.get(s).desired.drain for s in ("i-1", "i-2", "i-3"))
    assert reg.claim("ann") is not None


def test_only_a_demand_policy() -> None:
    with pytest.raises(ValueError, match="demand policy"):
        DemandController(SimpleNamespace(), Policy(ships=3))
