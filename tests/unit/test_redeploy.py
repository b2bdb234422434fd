"""Rolling redeploy against a real Registry and Fleet, with fake agents answering by report."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from campfleet.mux.cloud import LocalCloud
from campfleet.mux.control import ControlServer
from campfleet.mux.fleet import Fleet
from campfleet.mux.redeploy import Redeployer, RedeployError, check_image_ref, image_repository
from campfleet.mux.registry import Registry
from campfleet.protocol import ContainerSpec, ContainerStatus, Desired, Report, ShipState

OLD = "campfleet/ship:v1"
NEW = "campfleet/ship:v2"
ZONE = "local-a"


class FakeAgents:
    """Answers each desired-state change like a real agent would, a few ms later.

    Records how many ships were between "told" and "reported" at the same moment, which is
    exactly what a batch size must bound.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.seq: dict[str, int] = {}
        self.failing: dict[tuple[str, str], str] = {}  # (ship, image) -> container error
        self.zones: dict[str, str] = {}  # ship -> zone (default ZONE)
        self.silent: set[str] = set()  # ships that stop answering
        self.max_in_flight = 0
        self.order: list[str] = []  # ships in the order their redeploy was applied

    def report(self, ship_id: str, state: ShipState = ShipState.RUNNING, error: str = "") -> None:
        known = self.registry.get(ship_id) is not None
        desired = self.registry.desired(ship_id) if known else Desired()
        containers = []
        for spec in desired.containers:
            failure = self.failing.get((ship_id, spec.image), "")
            containers.append(
                ContainerStatus(
                    name=spec.name,
                    image=spec.image,
                    digest="sha256:" + spec.image.replace(":", "-"),
                    state="failed" if failure else "running",
                    port=spec.port,
                    error=failure,
                )
            )
        self.seq[ship_id] = self.seq.get(ship_id, 0) + 1
        self.registry.apply_report(
            Report(
                ship_id=ship_id,
                zone=self.zones.get(ship_id, ZONE),
                address="127.0.0.1",
                port_base=9000,
                state=state,
                error=error,
                containers=containers,
                volume=desired.volume,
                generation=desired.generation,
                seq=self.seq[ship_id],
                ts=time.time(),
            )
        )

    async def run(self) -> None:
        while True:
            behind = [
                r.ship_id
                for r in self.registry.ships()
                if r.generation > r.applied_generation and r.ship_id not in self.silent
            ]
            self.max_in_flight = max(self.max_in_flight, len(behind))
            await asyncio.sleep(0.01)  # "pulling the image"
            for ship_id in behind:
                self.order.append(ship_id)
                self.report(ship_id)
            await asyncio.sleep(0.005)


@pytest.fixture
async def event(tmp_path: Path) -> AsyncIterator[tuple[Fleet, FakeAgents, Redeployer]]:
    registry = Registry(tmp_path / "registry.sqlite")
    cloud = LocalCloud(tmp_path / "volumes", 8)
    control = ControlServer(registry, b"fleet-secret")
    fleet = Fleet(
        registry,
        cloud,
        control,
        expected=6,
        ready_percent=100,
        ship_image=OLD,
        state_file=tmp_path / "fleet.json",
    )
    registry.add_volumes(await cloud.list_volumes())
    agents = FakeAgents(registry)
    for n in range(1, 7):
        ship = f"i-{n:04d}"
        agents.report(ship, ShipState.BOOTING)
        agents.report(ship, ShipState.AVAILABLE)
    # Five attendees on five ships (one also has a project with its own image); one ship free.
    for n in range(1, 6):
        owner = f"attendee{n}"
        record = registry.claim(owner)
        assert record is not None
        volume = registry.volume_for(owner, ZONE)
        registry.set_volume(record.ship_id, volume.volume_id)
        registry.set_container(
            record.ship_id,
            ContainerSpec(name="", image=OLD, cmd=["serve", owner], env={"U": owner}, port=9001),
        )
        if n == 1:
            registry.set_container(record.ship_id, ContainerSpec(name="gpu", image="other/img:1"))
        agents.report(record.ship_id)
    task = asyncio.ensure_future(agents.run())
    yield fleet, agents, Redeployer(fleet, timeout=2.0)
    task.cancel()
    registry.close()


def default_spec(fleet: Fleet, ship_id: str) -> ContainerSpec:
    return next(s for s in fleet.registry.desired(ship_id).containers if s.name == "")


async def test_rollout_goes_batch_by_batch_and_keeps_env_port_and_volume(event) -> None:
    fleet, agents, redeployer = event
    before = {
        r.ship_id: (default_spec(fleet, r.ship_id), r.volume_id)
        for r in fleet.registry.ships()
        if r.owner
    }
    rollout = redeployer.start(NEW, 2)
    assert fleet.ship_image == NEW  # spawns from now on get the new image
    assert [s.batch for s in rollout.ships] == [1, 1, 2, 2, 3]
    assert await redeployer.wait() is rollout
    assert rollout.state == "done", rollout.halted
    assert agents.max_in_flight == 2
    batch_of = {s.ship_id: s.batch for s in rollout.ships}
    assert [batch_of[s] for s in agents.order] == sorted(batch_of[s] for s in agents.order)
    for ship_id, (spec, volume) in before.items():
        record = fleet.registry.get(ship_id)
        now = default_spec(fleet, ship_id)
        assert (now.image, now.cmd, now.env, now.port) == (NEW, spec.cmd, spec.env, spec.port)
        assert record.volume_id == volume and record.volume_id is not None
        assert record.container("").image == NEW and record.container("").state == "running"
    gpu_ship = fleet.registry.owned_by("attendee1").ship_id
    assert fleet.registry.get(gpu_ship).container("gpu").image == "other/img:1"
    progress = rollout.to_json()
    assert progress["counts"]["done"] == 5 and progress["total"] == 5
    assert {s["digest"] for s in progress["ships"]} == {"sha256:campfleet/ship-v2"}
    free = [r for r in fleet.registry.ships() if r.owner is None]
    assert len(free) == 1 and free[0].desired.containers == []


async def test_a_failing_ship_halts_the_rollout_and_names_ship_and_reason(event) -> None:
    fleet, agents, redeployer = event
    first = [r.ship_id for r in fleet.registry.ships() if r.owner][1]
    agents.failing[(first, NEW)] = "exited with code 3: init.sh: No such file"
    rollout = redeployer.start(NEW, 2)
    await redeployer.wait()
    assert rollout.state == "halted"
    assert rollout.halted == f"{first}: notebook failed: exited with code 3: init.sh: No such file"
    statuses = [s.status for s in rollout.ships]
    assert statuses == ["done", "failed", "skipped", "skipped", "skipped"]
    for s in rollout.ships[2:]:
        assert default_spec(fleet, s.ship_id).image == OLD  # never touched

    # After a hub restart (a new Redeployer), the fixed image still goes to every ship left
    # on v1 and to the one that failed on v2: the lineage comes from the registry.
    del agents.failing[(first, NEW)]
    restarted = Redeployer(fleet, timeout=2.0)
    fixed = restarted.start("campfleet/ship:v3", 3)
    assert fixed.replaced == [OLD, NEW]
    assert sorted(s.ship_id for s in fixed.ships) == sorted(s.ship_id for s in rollout.ships)
    await restarted.wait()
    assert fixed.state == "done", fixed.halted
    gpu_ship = fleet.registry.owned_by("attendee1").ship_id
    assert fleet.registry.get(gpu_ship).container("gpu").image == "other/img:1"


async def test_a_silent_ship_fails_its_batch_after_the_timeout(event) -> None:
    fleet, agents, redeployer = event
    ships = [r.ship_id for r in fleet.registry.ships() if r.owner]
    agents.silent.add(ships[0])
    rollout = redeployer.start(NEW, 5)
    await redeployer.wait()
    assert rollout.state == "halted"
    assert rollout.halted == f"{ships[0]}: did not report {NEW} running within 2 s"
    assert [s.status for s in rollout.ships] == ["failed", "done", "done", "done", "done"]


async def test_a_ship_lost_mid_rollout_halts_it_and_lost_ships_are_not_targets(event) -> None:
    fleet, agents, redeployer = event
    ships = [r.ship_id for r in fleet.registry.ships() if r.owner]
    agents.silent.update(ships)
    rollout = redeployer.start(NEW, 1)
    await asyncio.sleep(0.1)
    assert fleet.registry.mark_lost(now=time.time() + 3600, timeout=60)
    await redeployer.wait()
    assert rollout.state == "halted"
    assert rollout.halted.startswith(f"{ships[0]}: ship lost: no report for more than")
    again = redeployer.start("campfleet/ship:v3", 1)
    assert again.ships == []
    await redeployer.wait()
    assert again.state == "done"


async def test_bad_requests_are_refused_with_one_line(event) -> None:
    fleet, _agents, redeployer = event
    for image, batch, message in [
        ("Campfleet/Ship:v2", 1, "is not a valid image reference"),
        ("", 1, "image is empty"),
        (NEW, 0, "batch must be a whole number from 1 to 1000, got 0"),
        (NEW, "2", "batch must be a whole number from 1 to 1000, got '2'"),
    ]:
        with pytest.raises(RedeployError, match=message):
            redeployer.start(image, batch)
    assert fleet.ship_image == OLD
    redeployer.start(NEW, 1)
    with pytest.raises(RedeployError, match=r"rollout 1 to campfleet/ship:v2 is still running"):
        redeployer.start("campfleet/ship:v3", 1)
    await redeployer.wait()


@pytest.mark.parametrize(
    "ref",
    [
        "local",
        "campfleet/ship:v2",
        "localhost:5000/a/b:c",
        "1.dkr.ecr.eu-west-1.amazonaws.com/s:1",
        "ubuntu@sha256:" + "a" * 64,
    ],
)
def test_valid_image_refs(ref: str) -> None:
    assert check_image_ref(ref) == ref


@pytest.mark.parametrize("ref", ["a:b:c", "x y", "a:", "UPPER", "a@sha256:short"])
def test_invalid_image_refs(ref: str) -> None:
    with pytest.raises(RedeployError):
        check_image_ref(ref)


async def test_only_the_stacks_repository_unless_allowed(event) -> None:
    """A leaked organizer token must not roll an image of the attacker's choosing out to
    every attendee's ship."""
    fleet, _agents, _ = event
    redeployer = Redeployer(fleet, timeout=2.0, repository=image_repository(OLD))
    evil = "attacker.example.org/campfleet/ship:v2"
    with pytest.raises(RedeployError, match="not from this stack's repository campfleet/ship"):
        redeployer.start(evil, 1)
    assert redeployer.current is None and fleet.ship_image == OLD  # nothing started
    assert redeployer.start(NEW + "@sha256:" + "a" * 64, 1).image.startswith(NEW)
    await redeployer.wait()
    assert redeployer.start(evil, 1, allow_external=True).image == evil
    await redeployer.wait()
    ecr = "123.dkr.ecr.eu-west-1.amazonaws.com/campfleet-dev-ship"
    assert image_repository(f"{ecr}@sha256:ab") == image_repository(f"{ecr}:v1") == ecr
    assert image_repository("localhost:5000/ship:v1") == "localhost:5000/ship"
