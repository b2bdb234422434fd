"""ShipSpawner against a real registry and LocalCloud, with agents simulated by reports.

No network: a fake agent answers every desired-state change with a report, through the same
`Registry.apply_report` the control API uses, so the spawner's wake-ups are the real ones.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest

from campfleet.mux.cloud import LocalCloud
from campfleet.mux.fleet import Fleet
from campfleet.mux.registry import Registry
from campfleet.mux.spawner import ShipError, ShipSpawner
from campfleet.protocol import ContainerStatus, Report, ShipState


class NoControl:
    """The control API is not under test here; reports go straight into the registry."""

    async def start(self, address: str, port: int) -> None:
        pass

    def stop(self) -> None:
        pass


class FakeAgents:
    """Ships that report and run whatever the desired state says (or fail a named container)."""

    def __init__(self, registry: Registry, fail: Optional[dict] = None) -> None:
        self.registry = registry
        self.seq = itertools.count(1)
        self.fail = fail or {}
        self.dead: set[str] = set()
        registry.add_listener(self._changed)

    def report(self, ship_id: str, state: ShipState, containers=(), generation=0, volume=None):
        index = int(ship_id.rsplit("-", 1)[1])
        self.registry.apply_report(
            Report(
                ship_id=ship_id,
                zone="local-a",
                address="127.0.0.1",
                port_base=9000 + 10 * index,
                state=state,
                containers=list(containers),
                volume=volume,
                generation=generation,
                seq=next(self.seq),
                ts=0.0,
            )
        )

    def _changed(self, ship_id: str) -> None:
        asyncio.get_running_loop().call_soon(self._apply, ship_id)

    def _apply(self, ship_id: str) -> None:
        record = self.registry.get(ship_id)
        if ship_id in self.dead or record.applied_generation >= record.generation:
            return
        desired = record.desired
        statuses = [
            ContainerStatus(
                name=c.name,
                image=c.image,
                digest="sha256:x",
                state="failed" if c.name in self.fail else "running",
                port=c.port,
                error=self.fail.get(c.name, ""),
            )
            for c in desired.containers
        ]
        state = ShipState.RUNNING if statuses else ShipState.AVAILABLE
        self.report(ship_id, state, statuses, record.generation, desired.volume)


@pytest.fixture
async def fleet(tmp_path: Path):
    registry = Registry(tmp_path / "registry.sqlite")
    cloud = LocalCloud(tmp_path / "volumes", 6)
    fleet = Fleet(
        registry,
        cloud,
        NoControl(),
        expected=4,
        ready_percent=100,
        ship_image="ship:1",
        state_file=tmp_path / "fleet.json",
    ).install()
    await fleet.start()
    yield fleet
    fleet.stop()
    registry.close()


def make_spawner(name: str, server_name: str = "", **config) -> ShipSpawner:
    user = SimpleNamespace(
        name=name, escaped_name=name, url=f"/user/{name}/", progress_url=lambda n: "/progress"
    )
    hub = SimpleNamespace(api_url="http://127.0.0.1:8081/hub/api", base_url="/hub/", public_host="")
    spawner = ShipSpawner(user=user, hub=hub, cmd=["jupyterhub-singleuser"], **config)
    spawner.orm_spawner = SimpleNamespace(name=server_name, server=None, state=None)
    spawner.api_token = f"token-{name}"
    spawner.start_timeout = 10
    return spawner


def ships(agents: FakeAgents, n: int, state=ShipState.AVAILABLE) -> list[str]:
    ids = [f"i-local-{i}" for i in range(1, n + 1)]
    for ship_id in ids:
        agents.report(ship_id, ShipState.BOOTING)
        agents.report(ship_id, state)
    return ids


async def collect(spawner: ShipSpawner) -> list[str]:
    return [e["message"] async for e in spawner.progress()]


async def test_gate_holds_until_ready_percent_then_assigns(fleet: Fleet) -> None:
    agents = FakeAgents(fleet.registry)
    ships(agents, 2)
    spawner = make_spawner("alice")
    spawner._spawn_pending = True
    start = asyncio.ensure_future(spawner.start())
    progress = asyncio.ensure_future(collect(spawner))
    await asyncio.sleep(0.3)
    assert not start.done()
    assert fleet.registry.owned_by("alice") is None  # nothing handed out below the gate
    for ship_id in ("i-local-3", "i-local-4"):
        agents.report(ship_id, ShipState.BOOTING)
        agents.report(ship_id, ShipState.AVAILABLE)
    url = await asyncio.wait_for(start, 5)
    messages = await asyncio.wait_for(progress, 5)
    ship = fleet.registry.owned_by("alice")
    assert url == f"http://127.0.0.1:{ship.port_base}"
    assert messages[0] == "waiting for a ship: 2 of 4 ready (the room opens at 4)"
    assert any(m.startswith(f"ship {ship.ship_id} assigned") for m in messages)
    assert any(m.startswith("home volume vol-local-") for m in messages)
    spec = ship.desired.containers[0]
    assert spec.image == "ship:1" and spec.env["JUPYTERHUB_API_TOKEN"] == "token-alice"
    assert spec.env["JUPYTERHUB_SERVICE_URL"] == f"http://127.0.0.1:{ship.port_base}/"
    assert ship.volume_id == spawner.volume_id
    assert fleet.cloud.attachments[spawner.volume_id] == ship.ship_id
    assert ship.ship_id in fleet.cloud.protected
    assert spawner.get_state() == {"ship_id": ship.ship_id, "volume_id": spawner.volume_id}


async def test_admin_opens_the_gate(fleet: Fleet) -> None:
    agents = FakeAgents(fleet.registry)
    ships(agents, 1)
    spawner = make_spawner("bob")
    start = asyncio.ensure_future(spawner.start())
    await asyncio.sleep(0.2)
    assert not start.done()
    fleet.open_gate()
    assert (await asyncio.wait_for(start, 5)).startswith("http://127.0.0.1:")


async def test_room_at_once_gets_distinct_ships(fleet: Fleet) -> None:
    agents = FakeAgents(fleet.registry)
    ships(agents, 4)
    spawners = [make_spawner(f"user{i}") for i in range(4)]
    urls = await asyncio.wait_for(asyncio.gather(*(s.start() for s in spawners)), 10)
    assert len(set(urls)) == 4
    assert len({s.ship_id for s in spawners}) == 4
    assert len({s.volume_id for s in spawners}) == 4


async def test_poll_stop_and_restart_keep_ship_and_volume(fleet: Fleet) -> None:
    agents = FakeAgents(fleet.registry)
    ships(agents, 4)
    spawner = make_spawner("carol")
    await asyncio.wait_for(spawner.start(), 5)
    ship_id, volume_id = spawner.ship_id, spawner.volume_id
    assert await spawner.poll() is None
    await asyncio.wait_for(spawner.stop(), 5)
    assert await spawner.poll() == 0
    assert fleet.registry.owned_by("carol").ship_id == ship_id  # kept for the event
    assert fleet.registry.desired(ship_id).containers == []
    await asyncio.wait_for(spawner.start(), 5)
    assert (spawner.ship_id, spawner.volume_id) == (ship_id, volume_id)


async def test_dead_ship_means_gone_and_next_start_moves_with_the_volume(fleet: Fleet) -> None:
    agents = FakeAgents(fleet.registry)
    ships(agents, 4)
    spawner = make_spawner("dave")
    await asyncio.wait_for(spawner.start(), 5)
    old, volume_id = spawner.ship_id, spawner.volume_id
    agents.dead.add(old)
    fleet.registry.mark_lost(timeout=-1.0, now=1e12)  # every ship "not heard from": all lost
    assert await spawner.poll() == 1
    await asyncio.sleep(0.05)
    assert fleet.cloud.unhealthy[old].startswith("lost")
    for ship_id in ("i-local-5", "i-local-6"):
        agents.report(ship_id, ShipState.BOOTING)
        agents.report(ship_id, ShipState.AVAILABLE)
    restarted = make_spawner("dave")
    restarted.load_state(spawner.get_state())
    await asyncio.wait_for(restarted.start(), 5)
    assert restarted.ship_id not in (old, "")
    assert restarted.volume_id == volume_id
    assert fleet.registry.get(restarted.ship_id).volume_id == volume_id
    assert fleet.registry.get(old).owner is None


async def test_failed_project_fails_that_spawn_with_its_own_error(fleet: Fleet) -> None:
    agents = FakeAgents(
        fleet.registry, fail={"broken": "exited with code 3: init.sh: no such file"}
    )
    ships(agents, 4)
    projects = {"broken": {"image": "broken:1"}, "good": {"image": "good:2"}}
    default = make_spawner("erin", projects=projects)
    await asyncio.wait_for(default.start(), 5)
    broken = make_spawner("erin", "broken", projects=projects)
    with pytest.raises(ShipError, match=r"project broken failed to start .*init\.sh: no such file"):
        await asyncio.wait_for(broken.start(), 5)
    assert [(r.attendee, r.reason) for r in fleet.refusals] == [("erin", "ship")]
    good = make_spawner("erin", "good", projects=projects)
    url = await asyncio.wait_for(good.start(), 5)
    ship = fleet.registry.get(default.ship_id)
    assert good.ship_id == default.ship_id == broken.ship_id  # one ship, several projects
    assert url == f"http://127.0.0.1:{ship.port_base + 2}"  # sorted projects: broken=1, good=2
    assert ShipState(ship.state) == ShipState.RUNNING
    assert sorted(c.name for c in ship.desired.containers) == ["", "good"]
    assert await default.poll() is None
    # The failed container is gone from the ship, but the organizer still sees why it failed.
    (failure,) = fleet.start_failures
    assert failure["ship"] == ship.ship_id and failure["attendee"] == "erin"
    assert failure["reason"].endswith("init.sh: no such file")


async def test_unknown_project_is_refused(fleet: Fleet) -> None:
    fleet.open_gate()
    spawner = make_spawner("frank", "nope", projects={"intro": {"image": "x"}})
    with pytest.raises(
        ShipError, match="no project named 'nope' at this event \\(projects: intro\\)"
    ) as e:
        await spawner.start()
    assert e.value.status_code == 404 and e.value.reason == "project"


async def test_full_room_is_refused_with_what_to_do(fleet: Fleet) -> None:
    """Every home volume taken: a clear 503 naming the room size, not the registry's error."""
    agents = FakeAgents(fleet.registry)
    ships(agents, 4)
    for i in range(6):  # the pool has 6 volumes
        fleet.registry.volume_for(f"earlier{i}")
    spawner = make_spawner("late")
    with pytest.raises(ShipError, match=r"The room is full: all 6 places are taken") as e:
        await asyncio.wait_for(spawner.start(), 5)
    assert e.value.status_code == 503 and e.value.reason == "capacity"
    assert "Ask an organizer to add ships" in e.value.jupyterhub_message
    assert fleet.registry.owned_by("late") is None
    assert [(r.attendee, r.reason, r.message) for r in fleet.refusals] == [
        ("late", "capacity", e.value.message)
    ]


async def test_closed_gate_gives_up_after_gate_wait_saying_when_it_opens(fleet: Fleet) -> None:
    agents = FakeAgents(fleet.registry)
    ships(agents, 2)  # 2 of 4 ready, the gate is at 100 %
    spawner = make_spawner("early", gate_wait=0.3)
    with pytest.raises(ShipError, match=r"The room is not open yet: 2 of 4 machines are ready"):
        await asyncio.wait_for(spawner.start(), 5)
    assert fleet.registry.owned_by("early") is None
    assert fleet.refusals[-1].reason == "gate"


async def test_release_on_stop_returns_the_ship(fleet: Fleet) -> None:
    agents = FakeAgents(fleet.registry)
    ships(agents, 4)
    spawner = make_spawner("gina", release_on_stop=True)
    await asyncio.wait_for(spawner.start(), 5)
    ship_id, volume_id = spawner.ship_id, spawner.volume_id
    await asyncio.wait_for(spawner.stop(), 5)
    assert fleet.registry.get(ship_id).owner is None
    assert volume_id not in fleet.cloud.attachments
    assert ship_id not in fleet.cloud.protected
    assert fleet.registry.volume_for("gina").volume_id == volume_id  # the volume stays hers


async def test_full_zone_waits_without_spinning_then_says_so(fleet: Fleet) -> None:
    """Ships that are 'available' but claimed must not make the wait return at once forever
    (that spun the hub's event loop); after pool_wait the attendee reads why."""
    agents = FakeAgents(fleet.registry)
    for i, ship_id in enumerate(ships(agents, 4)):
        assert fleet.registry.claim(f"taken{i}").ship_id == ship_id  # claimed, still "available"
    spawner = make_spawner("hank", pool_wait=1.0)
    emitted = []

    def emit(progress: int, message: str) -> None:
        emitted.append(message)
        if len(emitted) > 20:
            raise RuntimeError(f"spinning: {len(emitted)} progress events")

    spawner._emit = emit
    with pytest.raises(ShipError, match=r"No machine is free in local-a, where your files are"):
        await asyncio.wait_for(spawner.start(), 5)
    assert emitted[0] == "waiting for a ship in local-a: none available (4 available fleet-wide)"
    assert fleet.registry.owned_by("hank") is None


async def test_waiting_attendee_gets_a_ship_freed_meanwhile(fleet: Fleet) -> None:
    agents = FakeAgents(fleet.registry)
    for i, _ship_id in enumerate(ships(agents, 4)):
        fleet.registry.claim(f"taken{i}")
    spawner = make_spawner("ivy")
    start = asyncio.ensure_future(spawner.start())
    await asyncio.sleep(0.3)
    assert not start.done()
    fleet.registry.release(fleet.registry.owned_by("taken2").ship_id)
    assert (await asyncio.wait_for(start, 5)).startswith("http://127.0.0.1:")
    assert fleet.registry.owned_by("ivy").ship_id == spawner.ship_id


@pytest.mark.parametrize("release_on_stop", [False, True])
async def test_cancelled_start_leaves_no_idle_claim_when_ships_go_back(
    fleet: Fleet, release_on_stop: bool
) -> None:
    """JupyterHub cancels start() on start_timeout or when the attendee cancels the spawn."""
    agents = FakeAgents(fleet.registry)
    ships(agents, 4)
    attaching = asyncio.Event()

    async def slow_attach(volume_id: str, instance_id: str) -> str:
        attaching.set()
        await asyncio.sleep(60)
        return ""

    fleet.cloud.attach_volume = slow_attach
    spawner = make_spawner("jack", release_on_stop=release_on_stop)
    start = asyncio.ensure_future(spawner.start())
    await asyncio.wait_for(attaching.wait(), 5)
    held = fleet.registry.owned_by("jack")
    assert held is not None  # claimed, volume not attached yet
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    assert fleet.registry.desired(held.ship_id).containers == []  # nothing half-applied
    if release_on_stop:
        assert fleet.registry.owned_by("jack") is None
        assert fleet.registry.get(held.ship_id).owner is None
    else:
        assert fleet.registry.owned_by("jack").ship_id == held.ship_id  # kept for the event


async def churn(agents: FakeAgents, ship_id: str, changes: int) -> None:
    """`changes` reports of a booting ship that each change something (its probe's port),
    each in a loop iteration of its own, as reports arrive."""
    for n in range(changes):
        probe = ContainerStatus("boot-probe", "ship:1", "sha256:x", "starting", 9500 + n)
        agents.report(ship_id, ShipState.BOOTING, [probe])
        await asyncio.sleep(0.005)


async def test_attendees_at_the_gate_are_not_woken_by_every_report(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attendees arriving before the room opens wait once each, not once per report: 4 waiters
    x 60 reports used to be 480 ship counts (each waiter re-counted twice per report)."""
    agents = FakeAgents(fleet.registry)
    ships(agents, 2)
    counts, real = [], fleet.registry.counts
    monkeypatch.setattr(fleet.registry, "counts", lambda: counts.append(1) or real())
    starts = [asyncio.ensure_future(make_spawner(f"early{i}").start()) for i in range(4)]
    await asyncio.sleep(0.1)
    counted = len(counts)
    await churn(agents, "i-local-3", 60)
    await asyncio.sleep(0.1)
    assert len(counts) - counted <= 60 + 8  # the fleet's own count per change, not per waiter
    assert not any(s.done() for s in starts)
    for ship_id in ("i-local-3", "i-local-4"):
        agents.report(ship_id, ShipState.BOOTING)
        agents.report(ship_id, ShipState.AVAILABLE)
    urls = await asyncio.wait_for(asyncio.gather(*starts), 5)  # woken at once by the opening
    assert len(set(urls)) == 4


async def test_attendees_waiting_for_a_ship_wake_only_when_one_is_freed(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = FakeAgents(fleet.registry)
    for i, _ship_id in enumerate(ships(agents, 4)):
        fleet.registry.claim(f"taken{i}")
    claims, real = [], fleet.registry.claim
    monkeypatch.setattr(fleet.registry, "claim", lambda *a, **k: claims.append(1) or real(*a, **k))
    starts = [asyncio.ensure_future(make_spawner(f"late{i}").start()) for i in range(2)]
    await asyncio.sleep(0.1)
    claimed = len(claims)
    await churn(agents, "i-local-5", 40)  # a new ship still booting: nothing to claim yet
    await asyncio.sleep(0.1)
    assert len(claims) == claimed  # nobody re-claimed on those 40 reports
    fleet.registry.release(fleet.registry.owned_by("taken1").ship_id)
    agents.report("i-local-5", ShipState.AVAILABLE)
    urls = await asyncio.wait_for(asyncio.gather(*starts), 5)
    assert len(set(urls)) == 2


async def test_deleting_the_user_frees_the_ship_and_keeps_a_used_volume(fleet: Fleet) -> None:
    agents = FakeAgents(fleet.registry)
    ships(agents, 4)
    spawner = make_spawner("hana")
    await asyncio.wait_for(spawner.start(), 5)
    ship_id, volume_id = spawner.ship_id, spawner.volume_id
    await asyncio.wait_for(spawner.stop(), 5)
    await spawner.delete_forever()
    assert fleet.registry.get(ship_id).owner is None
    assert ship_id not in fleet.cloud.protected and volume_id not in fleet.cloud.attachments
    kept = fleet.registry.volume(volume_id)
    assert (kept.owner, kept.retained_for) == (None, "hana")  # mounted once: kept for her
    again = make_spawner("hana")  # someone types the freed name
    await asyncio.wait_for(again.start(), 5)
    assert again.volume_id != volume_id
