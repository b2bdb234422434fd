"""The fleet simulator against the real control API and registry: it must stay the protocol.

Everything runs in the test's event loop: a ControlServer over a real Registry file, and a
SimFleet whose ships sign, report, long-poll and verify answers with the agent's own client.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from campfleet.identity import TestIdentityAuthority
from campfleet.local import SHIP_PORT_OFFSET, LocalEvent, find_free_port
from campfleet.mux.attest import KnownInstances, local_attestor
from campfleet.mux.control import ControlServer
from campfleet.mux.registry import Registry
from campfleet.protocol import ContainerSpec, ShipState
from campfleet.simfleet import SimFleet
from campfleet.standin import BODY
from tests.integration.conftest import STANDIN, Admin, registry_of, wait_until

SECRET = b"sim-fleet-secret"  # the mux's; the simulated ships attest for keys of their own
AUTHORITY = TestIdentityAuthority()
HEARTBEAT = 0.5


async def until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def spec(port: int, name: str = "") -> ContainerSpec:
    return ContainerSpec(name=name, image="sim:1", port=port, health_path="/user/a/api")


async def fetch(port: int) -> bytes:
    def get() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/user/a/lab", timeout=2) as r:
            return r.read()

    return await asyncio.to_thread(get)


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.registry = Registry(tmp / "registry.sqlite")
        self.instances = KnownInstances()  # the group's instances, as EC2 would list them
        self.server = ControlServer(
            self.registry, SECRET, HEARTBEAT, 3, poll_timeout=2.0,
            attestor=local_attestor(AUTHORITY.trusted, self.instances),
        )  # fmt: skip
        self.tasks: list[asyncio.Future] = []
        self.fleets: list[SimFleet] = []

    async def sim(
        self, ships: int, authority: TestIdentityAuthority = AUTHORITY, **kw: object
    ) -> SimFleet:
        # find_free_port checks the block of 10 ports of every ship (same layout as LocalEvent)
        port_base = find_free_port(ships) + SHIP_PORT_OFFSET
        fleet = SimFleet(
            f"http://127.0.0.1:{self.server.port}", authority, ships, port_base,
            heartbeat=HEARTBEAT, poll_timeout=2.0, **kw,
        )  # fmt: skip
        self.instances.add([ship.ship_id for ship in fleet.ships])
        self.tasks.append(asyncio.ensure_future(fleet.run()))
        self.fleets.append(fleet)
        return fleet


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    await h.server.start("127.0.0.1", 0)
    try:
        yield h
    finally:
        for fleet in h.fleets:
            fleet.stop()
        await asyncio.wait_for(asyncio.gather(*h.tasks, return_exceptions=True), 10)
        h.server.stop()
        await asyncio.sleep(0.05)
        h.registry.close()


async def test_ships_boot_take_a_container_and_serve_it(harness: Harness) -> None:
    fleet = await harness.sim(3, boot_delay=0.2)
    reg = harness.registry
    await until(lambda: reg.counts()["available"] == 3, 10, "3 ships available")
    ids = sorted(s.ship_id for s in reg.ships())
    assert ids == [s.ship_id for s in fleet.ships]
    record = reg.claim("alice")
    ship = next(s for s in fleet.ships if s.ship_id == record.ship_id)
    with socket.socket() as other, pytest.raises(OSError):  # the ship holds its server's port
        other.bind(("127.0.0.1", record.port_base))
    reg.set_volume(record.ship_id, "vol-alice")
    gen = reg.set_container(record.ship_id, spec(record.port_base))

    def running() -> object:
        r = reg.get(record.ship_id)
        c = r.container("")
        return r.applied_generation >= gen and c is not None and c.state == "running" and r

    rec = await until(running, 5, "the container running")
    assert rec.state is ShipState.RUNNING and rec.mounted_volume == "vol-alice"
    assert await fetch(record.port_base) == BODY  # the stand-in answers on the spawner's port
    # Every message was signed, in order and accepted: nothing was refused by the real API.
    assert harness.server.rejections == dict.fromkeys(harness.server.rejections, 0)
    assert fleet.stats.rejected == {}
    seq_before = reg.get(record.ship_id).seq
    await until(lambda: reg.get(record.ship_id).seq > seq_before, 3, "a heartbeat")

    reg.remove_container(record.ship_id, "")
    await until(lambda: reg.get(record.ship_id).containers == [], 5, "the container gone")
    assert reg.get(record.ship_id).state is ShipState.AVAILABLE
    with pytest.raises(OSError):
        await fetch(record.port_base)  # its stand-in stopped listening
    assert not ship.containers


async def test_drain_terminate_and_lost(harness: Harness) -> None:
    fleet = await harness.sim(2)
    reg = harness.registry
    await until(lambda: reg.counts()["available"] == 2, 10, "2 ships available")
    record = reg.claim("carol")
    second = record.ship_id
    first = next(s.ship_id for s in fleet.ships if s.ship_id != second)
    reg.set_volume(second, "vol-carol")
    reg.set_container(second, spec(record.port_base))
    await until(lambda: reg.get(second).state is ShipState.RUNNING, 5, "running")
    reg.set_drain(second, True)  # drained: containers stopped, volume given back
    await until(
        lambda: (r := reg.get(second)).containers == [] and r.mounted_volume is None, 5, "drained"
    )
    reg.set_terminate(first, True)
    await until(lambda: reg.get(first).state is ShipState.TERMINATED, 5, "terminated")
    assert [s.terminated for s in fleet.ships if s.ship_id in (first, second)] == [
        s.ship_id == first for s in fleet.ships
    ]
    fleet.stop()  # ships go silent: the mux marks the live one lost, not the terminated one
    await asyncio.sleep(HEARTBEAT * 4)
    harness.server.check_lost()
    await until(lambda: reg.get(second).state is ShipState.LOST, 5, "the silent ship lost")
    assert reg.get(first).state is ShipState.TERMINATED


async def test_identities_signed_by_another_authority_are_refused(harness: Harness) -> None:
    fleet = await harness.sim(2, authority=TestIdentityAuthority())
    await until(lambda: fleet.stats.rejected.get("forged", 0) >= 2, 15, "both ships told: forged")
    assert harness.server.rejections["forged"] >= 2
    assert harness.registry.ships() == [] and fleet.stats.reports == 0
    assert fleet.stats.attested == 0 and harness.server.attested == 0


async def test_a_failed_container_reports_its_error(harness: Harness) -> None:
    fleet = await harness.sim(1)
    reg = harness.registry
    await until(lambda: reg.counts()["available"] == 1, 10, "1 ship available")
    record = reg.claim("bob")
    with socket.socket() as taken:  # something else holds the port
        taken.bind(("127.0.0.1", record.port_base + 1))
        taken.listen()
        reg.set_container(record.ship_id, spec(record.port_base + 1, name="proj"))

        def failed() -> object:
            c = reg.get(record.ship_id).container("proj")
            return c is not None and c.state == "failed" and c

        c = await until(failed, 5, "the container failed")
    assert f":{record.port_base + 1}" in c.error
    assert fleet.stats.containers_failed == 1


def test_command_line_refuses_bad_input(tmp_path: Path) -> None:
    TestIdentityAuthority.open(tmp_path / "ca")
    base = [
        sys.executable,
        "-m",
        "campfleet.simfleet",
        "--identity-authority",
        str(tmp_path / "ca"),
    ]
    bad_url = subprocess.run(
        [*base, "--mux", "ftp://x", "--ships", "1", "--port-base", "20000"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad_url.returncode == 2 and "expected http://HOST:PORT" in bad_url.stderr
    no_ships = subprocess.run(
        [*base, "--mux", "http://127.0.0.1:1", "--ships", "0", "--port-base", "20000"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert no_ships.returncode == 2 and "ships must be at least 1" in no_ships.stderr
    bad_cpus = subprocess.run(
        [*base, "--mux", "http://127.0.0.1:1", "--ships", "1", "--port-base", "20000",
         "--cpus", "one"], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad_cpus.returncode == 2 and "--cpus 'one'" in bad_cpus.stderr
    no_authority = subprocess.run(
        [sys.executable, "-m", "campfleet.simfleet", "--identity-authority", str(tmp_path / "x"),
         "--mux", "http://127.0.0.1:1", "--ships", "1", "--port-base", "20000"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert no_authority.returncode == 2 and "no authority there" in no_authority.stderr
    assert "Traceback" not in no_ships.stderr + bad_url.stderr + bad_cpus.stderr


@pytest.mark.slow
def test_a_room_starts_on_simulated_ships(event_factory: Callable[..., LocalEvent]) -> None:
    """The whole mux (hub, proxy, ShipSpawner, control API) with the simulator as its fleet."""
    event = event_factory(12, launch=0, wait=False, singleuser_cmd=STANDIN)
    event.start_simulated_ships(ramp=1.0)
    event.wait_ready(timeout=120)
    admin = Admin(event)
    names = [f"sim{i:02d}" for i in range(12)]
    assert admin.api("POST", "/users", json={"usernames": names}).status_code == 201
    for name in names:
        assert admin.api("POST", f"/users/{name}/server").status_code in (201, 202)
    wait_until(lambda: all(admin.server_ready(n) for n in names), 120, "every server ready")
    for name in names:  # each attendee's first request, through the proxy, to their stand-in
        page = admin.server_get(name, "lab")
        assert (page.status_code, page.content) == (200, BODY), name
    registry = registry_of(event)
    try:
        ships = registry.ships()
    finally:
        registry.close()
    assert sorted(s.owner for s in ships if s.owner) == names
    assert {s.state for s in ships} == {ShipState.RUNNING}
    event.stop()  # SIGTERM: the simulator writes what it saw
    stats = json.loads((event.state_dir / "ships" / "simfleet" / "stats.json").read_text())
    assert stats["rejected"] == {} and stats["containers_started"] == 12
