"""The fleet's Prometheus metrics, computed from a real registry at scrape time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from campfleet.mux import metrics
from campfleet.mux.cloud import LocalCloud
from campfleet.mux.control import ControlServer
from campfleet.mux.fleet import Fleet
from campfleet.mux.redeploy import Redeployer, Rollout, ShipProgress
from campfleet.mux.registry import Registry
from campfleet.protocol import Report, ShipState
from tests.unit.test_redeploy import FakeAgents


def report_at(fleet: Fleet, agents: FakeAgents, ship_id: str, when: float) -> None:
    """An `available` report the registry stamps as received at `when`."""
    agents.seq[ship_id] = agents.seq.get(ship_id, 0) + 1
    zone = agents.zones.get(ship_id, "local-a")
    report = Report(ship_id, zone, "127.0.0.1", 9000, ShipState.AVAILABLE, seq=agents.seq[ship_id])
    fleet.registry.apply_report(report, now=when)


async def make_fleet(tmp_path: Path, expected: int) -> Fleet:
    """A Fleet in the test's loop (it marks failed ships unhealthy with a task)."""
    registry = Registry(tmp_path / "registry.sqlite")
    cloud = LocalCloud(tmp_path / "volumes", 4, zones=("local-a", "local-b"))
    registry.add_volumes(await cloud.list_volumes())
    return Fleet(
        registry,
        cloud,
        ControlServer(registry, b"fleet-secret"),
        expected=expected,
        ready_percent=75,
        ship_image="ship:1",
        state_file=tmp_path / "fleet.json",
    )


def scrape(fleet: Fleet, redeployer: Redeployer | None = None) -> dict[tuple, float]:
    """{(sample name, sorted labels...): value} from the exposition text Prometheus reads."""
    registry = CollectorRegistry()
    metrics.install(fleet, redeployer, registry=registry)
    text = generate_latest(registry).decode()
    return {
        (s.name, *sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
async def fleet(tmp_path: Path) -> Fleet:
    """Four ships: a1 running for alice (volume mounted), a2 available, a3 failed, b1 lost."""
    fleet = await make_fleet(tmp_path, expected=4)
    agents = FakeAgents(fleet.registry)
    agents.zones["i-b1"] = "local-b"
    for ship in ("i-a1", "i-a2", "i-a3", "i-b1"):
        agents.report(ship, ShipState.BOOTING)
        agents.report(ship, ShipState.AVAILABLE)
    ship = fleet.registry.claim("alice", "local-a")
    volume = fleet.registry.volume_for("alice", "local-a")
    fleet.registry.set_volume(ship.ship_id, volume.volume_id)
    agents.report(ship.ship_id, ShipState.RUNNING)
    fleet.registry.volume_for("bob", "local-b")  # assigned, never mounted
    agents.report("i-a3", ShipState.FAILED, error="container init failed: exit 3")
    report_at(fleet, agents, "i-b1", time.time() - 100)  # then silent
    assert fleet.registry.mark_lost(timeout=50) == ["i-b1"]
    return fleet


async def test_ships_gate_attendees_and_down_ships(fleet: Fleet) -> None:
    # i-b1 is lost (it was heard from first); i-a1 (running) and i-a2 (available) are live.
    registry = fleet.registry
    assert {s.ship_id: s.state for s in registry.ships()} == {
        "i-a1": ShipState.RUNNING,
        "i-a2": ShipState.AVAILABLE,
        "i-a3": ShipState.FAILED,
        "i-b1": ShipState.LOST,
    }
    values = scrape(fleet)
    assert values[("campfleet_ships", ("state", "running"), ("zone", "local-a"))] == 1
    assert values[("campfleet_ships", ("state", "available"), ("zone", "local-a"))] == 1
    assert values[("campfleet_ships", ("state", "failed"), ("zone", "local-a"))] == 1
    assert values[("campfleet_ships", ("state", "lost"), ("zone", "local-b"))] == 1
    assert values[("campfleet_ships", ("state", "available"), ("zone", "local-b"))] == 0
    assert values[("campfleet_ships_expected",)] == 4
    assert values[("campfleet_ships_live",)] == 2
    assert values[("campfleet_ships_ready",)] == 2
    assert values[("campfleet_readiness_gate_needed_ships",)] == 3
    # 2 ready of 3 needed, but the gate latched open when all four were available.
    assert values[("campfleet_readiness_gate_open",)] == 1
    assert values[("campfleet_attendees_holding_ships",)] == 1
    assert values[("campfleet_ships_awaiting_replacement",)] == 2
    down = {k: v for k, v in values.items() if k[0] == "campfleet_ship_down_info"}
    assert down == {
        (
            "campfleet_ship_down_info",
            ("reason", "container init failed: exit 3"),
            ("ship", "i-a3"),
            ("state", "failed"),
            ("zone", "local-a"),
        ): 1,
        (
            "campfleet_ship_down_info",
            ("reason", "no report for more than 50 s"),
            ("ship", "i-b1"),
            ("state", "lost"),
            ("zone", "local-b"),
        ): 1,
    }


async def test_gate_closed_until_the_room_is_ready(tmp_path: Path) -> None:
    fleet = await make_fleet(tmp_path, expected=4)
    empty = scrape(fleet)  # no ship has reported: the alerts still have numbers to compare
    assert (empty[("campfleet_ships_live",)], empty[("campfleet_ships_expected",)]) == (0, 4)
    assert empty[("campfleet_readiness_gate_open",)] == 0
    agents = FakeAgents(fleet.registry)
    for ship in ("i-1", "i-2", "i-3"):
        agents.report(ship, ShipState.BOOTING)
    agents.report("i-1", ShipState.AVAILABLE)
    assert scrape(fleet)[("campfleet_readiness_gate_open",)] == 0
    agents.report("i-2", ShipState.AVAILABLE)
    agents.report("i-3", ShipState.AVAILABLE)
    assert scrape(fleet)[("campfleet_readiness_gate_open",)] == 1


async def test_a_replacement_clears_the_oldest_down_ship_first(fleet: Fleet) -> None:
    agents = FakeAgents(fleet.registry)
    agents.report("i-a4", ShipState.BOOTING)  # one replacement up: 3 live of 4
    sample = metrics.fleet_sample(fleet)
    # i-b1 died first (oldest last report), so it counts as replaced; i-a3 still awaits one.
    assert [d.ship_id for d in sample.down] == ["i-a3"]
    agents.report("i-a5", ShipState.BOOTING)
    assert metrics.fleet_sample(fleet).down == ()
    assert scrape(fleet)[("campfleet_ships_awaiting_replacement",)] == 0


async def test_volumes_by_state_and_zone(fleet: Fleet) -> None:
    values = scrape(fleet)
    volumes = {k[1:]: v for k, v in values.items() if k[0] == "campfleet_volumes"}
    assert volumes == {
        (("state", "free"), ("zone", "local-a")): 1,
        (("state", "assigned"), ("zone", "local-a")): 0,
        (("state", "mounted"), ("zone", "local-a")): 1,
        (("state", "kept"), ("zone", "local-a")): 0,
        (("state", "free"), ("zone", "local-b")): 1,
        (("state", "assigned"), ("zone", "local-b")): 1,
        (("state", "mounted"), ("zone", "local-b")): 0,
        (("state", "kept"), ("zone", "local-b")): 0,
    }
    # Users deleted: bob's volume was never mounted (back to free), alice's is kept.
    fleet.registry.release_owner("bob")
    fleet.registry.release_owner("alice")
    values = scrape(fleet)
    volumes = {k[1:]: v for k, v in values.items() if k[0] == "campfleet_volumes"}
    assert volumes[(("state", "kept"), ("zone", "local-a"))] == 1
    assert volumes[(("state", "mounted"), ("zone", "local-a"))] == 0
    assert volumes[(("state", "free"), ("zone", "local-b"))] == 2


async def test_report_ages_max_and_p95_over_live_ships(tmp_path: Path) -> None:
    fleet = await make_fleet(tmp_path, expected=20)
    agents = FakeAgents(fleet.registry)
    now = time.time()
    for i in range(20):
        agents.report(f"i-{i:02d}", ShipState.BOOTING)
        report_at(fleet, agents, f"i-{i:02d}", now - i)  # ship i last reported i seconds ago
    values = scrape(fleet)
    assert 19 <= values[("campfleet_ship_report_age_max_seconds",)] < 21
    # nearest rank: the 19th of 20 sorted ages (0..19) is 18
    assert 18 <= values[("campfleet_ship_report_age_p95_seconds",)] < 20


async def test_reports_and_refusals_are_counters(fleet: Fleet) -> None:
    fleet.control.accepted = 41
    fleet.control.rejections["forged"] = 3
    values = scrape(fleet)
    assert values[("campfleet_ship_reports_total",)] == 41
    assert values[("campfleet_control_refusals_total", ("reason", "forged"))] == 3
    assert values[("campfleet_control_refusals_total", ("reason", "replay"))] == 0


async def test_redeploy_progress(fleet: Fleet) -> None:
    redeployer = Redeployer(fleet)
    values = scrape(fleet, redeployer)
    assert values[("campfleet_redeploy_running",)] == 0
    assert not [k for k in values if k[0] == "campfleet_redeploy_ships"]
    redeployer.current = Rollout(
        id=1,
        image="ship:2",
        batch_size=1,
        replaced=["ship:1"],
        ships=[
            ShipProgress("i-a1", "alice", 1, [""], status="done"),
            ShipProgress("i-a2", None, 2, [""], status="redeploying"),
        ],
    )
    values = scrape(fleet, redeployer)
    assert values[("campfleet_redeploy_running",)] == 1
    assert values[("campfleet_redeploy_ships", ("status", "done"))] == 1
    assert values[("campfleet_redeploy_ships", ("status", "redeploying"))] == 1
    assert values[("campfleet_redeploy_ships", ("status", "waiting"))] == 0


async def test_start_histogram_has_every_outcome_and_install_replaces(fleet: Fleet) -> None:
    registry = CollectorRegistry()
    registry.register(metrics.START_SECONDS)
    before = registry.get_sample_value("campfleet_start_duration_seconds_count", {"outcome": "ok"})
    metrics.START_SECONDS.labels("ok").observe(1.5)
    after = registry.get_sample_value("campfleet_start_duration_seconds_count", {"outcome": "ok"})
    assert after == before + 1
    for outcome in ("failed", "cancelled"):
        assert (
            registry.get_sample_value(
                "campfleet_start_duration_seconds_count", {"outcome": outcome}
            )
            is not None
        )
    # A second install (the config re-read) replaces the first instead of failing as duplicate.
    first = metrics.install(fleet, registry=registry)
    second = metrics.install(fleet, registry=registry)
    assert first is not second
    assert registry.get_sample_value("campfleet_ships_expected") == 4


async def test_an_unreadable_fleet_fails_the_scrape_instead_of_reporting_nothing(
    fleet: Fleet,
) -> None:
    """Empty fleet metrics would silence every alert; a failed scrape makes `up` 0 instead."""
    registry = CollectorRegistry()
    metrics.install(fleet, registry=registry)
    fleet.registry.close()
    with pytest.raises(Exception, match="closed database"):
        generate_latest(registry)
