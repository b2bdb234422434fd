"""Real agent processes (local runtime) against a real ControlServer on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

import pytest

from campfleet.identity import TestIdentityAuthority
from campfleet.mux.attest import KnownInstances, local_attestor
from campfleet.mux.control import ControlServer
from campfleet.mux.registry import Registry, ShipRecord
from campfleet.protocol import ContainerSpec, ShipState

ROOT = Path(__file__).parents[2]
SECRET = b"integration-secret"  # the mux's only: its ships' keys derive from it
AUTHORITY = TestIdentityAuthority()  # signs the local ships' identity documents
# Lost after HEARTBEAT * LOST_AFTER = 1.5 s of silence (final): short, yet far above what a
# loaded 2-core CI machine delays an agent process.
HEARTBEAT = 0.5
LOST_AFTER = 3

# The "container": answers GET with its cwd, an env var and its argv[2] (the "version").
SERVER = """
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "|".join([os.getcwd(), os.environ.get("GREETING", ""), sys.argv[2]]).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_spec(port: int, version: str, greeting: str = "hello", name: str = "") -> ContainerSpec:
    return ContainerSpec(
        name=name,
        image=f"tutorial:{version}",
        cmd=[sys.executable, "-c", SERVER, str(port), version],
        env={"GREETING": greeting},
        port=port,
        health_path="/",
    )


def get(port: int) -> Optional[str]:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
    except OSError:
        return None


def wait_for(pred: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Mux:
    """Registry + ControlServer in a thread with its own loop; restartable on the same port."""

    def __init__(self, tmp: Path, heartbeat: float = HEARTBEAT) -> None:
        self.heartbeat = heartbeat
        self.db = tmp / "fleet.sqlite"
        self.port = free_port()
        self.states: dict[str, list[str]] = {}
        self.registry: Optional[Registry] = None
        self.instances = KnownInstances()  # the stand-in for EC2's view of the group
        self.start()

    def start(self) -> None:
        self.registry = Registry(self.db)
        self.registry.add_listener(self._record)
        self.server = ControlServer(
            self.registry,
            SECRET,
            self.heartbeat,
            LOST_AFTER,
            poll_timeout=2.0,
            attestor=local_attestor(AUTHORITY.trusted, self.instances),
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", self.port), self.loop)
        fut.result(10)

    def _record(self, ship_id: str) -> None:
        rec = self.registry.get(ship_id)
        seen = self.states.setdefault(ship_id, [])
        if rec and (not seen or seen[-1] != rec.state.value):
            seen.append(rec.state.value)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        time.sleep(0.1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.registry.close()
        self.registry = None

    def ship(self, ship_id: str) -> Optional[ShipRecord]:
        return self.registry.get(ship_id)

    def wait_state(self, ship_id: str, state: ShipState, timeout: float = 15) -> ShipRecord:
        return wait_for(
            lambda: (r := self.ship(ship_id)) is not None and r.state is state and r,
            timeout,
            f"{ship_id} {state.value} (now {self.ship(ship_id) and self.ship(ship_id).state})",
        )

    def wait_container(self, ship_id: str, gen: int, state: str = "running", timeout: float = 15):
        def ok():
            r = self.ship(ship_id)
            c = r and r.containers and r.container(r.desired.containers[0].name)
            return r and r.applied_generation >= gen and c and c.state == state and r

        return wait_for(ok, timeout, f"{ship_id} container {state} at generation {gen}")


class Agents:
    """Starts agent processes; kills every one (and checks their containers died) at the end."""

    def __init__(self, tmp: Path, mux: Mux) -> None:
        self.tmp, self.mux = tmp, mux
        self.volumes = tmp / "volumes"
        self.procs: dict[str, subprocess.Popen] = {}

    def identity_dir(self, ship_id: str) -> Path:
        return self.tmp / "identity" / ship_id

    def new_run(self, ship_id: str, pending_time: str = "") -> None:
        """What a boot (or a stop and start) of the instance gives it: a signed identity
        document for this run, and the instance in the group's listing."""
        document = AUTHORITY.document(
            ship_id, "127.0.0.1", region="local", zone="local-a", pending_time=pending_time
        )
        AUTHORITY.write(self.identity_dir(ship_id), document)
        self.mux.instances.add([ship_id])

    def start(self, ship_id: str, *extra: str) -> subprocess.Popen:
        state = self.tmp / "state" / ship_id
        if not self.identity_dir(ship_id).exists():
            self.new_run(ship_id)
        argv = [
            sys.executable, "-m", "campfleet.agent", "--local",
            "--mux", f"http://127.0.0.1:{self.mux.port}",
            "--identity-dir", str(self.identity_dir(ship_id)),
            "--ship-id", ship_id, "--zone", "local-a", "--address", "127.0.0.1",
            "--port-base", "9000", "--volumes-root", str(self.volumes), "--state-dir", str(state),
            "--heartbeat", str(self.mux.heartbeat), "--poll-timeout", "2",
            "--start-timeout", "20", *extra,
        ]  # fmt: skip
        log = (self.tmp / f"agent-{ship_id}.log").open("ab")
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
        self.procs[ship_id] = proc
        return proc

    def log(self, ship_id: str) -> str:
        return (self.tmp / f"agent-{ship_id}.log").read_text(errors="replace")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def mux(tmp_path: Path):
    m = Mux(tmp_path)
    yield m
    if m.registry is not None:
        m.stop()


@pytest.fixture
def agents(tmp_path: Path, mux: Mux):
    a = Agents(tmp_path, mux)
    yield a
    a.close()


def test_boot_claim_start_redeploy_and_sigterm(tmp_path: Path, mux: Mux, agents: Agents) -> None:
    content = tmp_path / "content-v1"
    (content / "lessons").mkdir(parents=True)
    (content / "lessons" / "intro.ipynb").write_text("intro v1")
    proc = agents.start("i-00000001", "--content", f"tutorial:v1={content}")
    mux.wait_state("i-00000001", ShipState.AVAILABLE, timeout=15)
    assert mux.states["i-00000001"][:2] == ["booting", "available"]

    ship = mux.registry.claim("alice")
    assert ship.ship_id == "i-00000001"
    port = free_port()
    mux.registry.set_volume("i-00000001", "vol-alice")
    t0 = time.monotonic()
    gen = mux.registry.set_container("i-00000001", server_spec(port, "v1", greeting="hi alice"))
    rec = mux.wait_container("i-00000001", gen)
    started = time.monotonic() - t0
    volume = agents.volumes / "vol-alice"
    assert get(port) == f"{volume}|hi alice|v1"
    assert rec.state is ShipState.RUNNING and rec.mounted_volume == "vol-alice"
    assert started < 5.0, f"start took {started:.2f} s"
    assert (volume / "lessons" / "intro.ipynb").read_text() == "intro v1"
    first_digest = rec.container("").digest

    (volume / "notes.txt").write_text("my work")  # the attendee's files
    (volume / "lessons" / "intro.ipynb").write_text("my edits")
    gen = mux.registry.set_container("i-00000001", server_spec(port, "v2", greeting="hi alice"))
    rec = mux.wait_container("i-00000001", gen)
    wait_for(lambda: get(port) == f"{volume}|hi alice|v2", 10, "redeployed server")
    assert rec.container("").digest != first_digest and rec.container("").image == "tutorial:v2"
    assert (volume / "notes.txt").read_text() == "my work"
    assert (volume / "lessons" / "intro.ipynb").read_text() == "my edits"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    rec = mux.wait_state("i-00000001", ShipState.TERMINATED, timeout=5)
    assert rec.containers == [] and rec.mounted_volume is None
    assert get(port) is None  # the container was stopped
    # The same ship (state dir) never comes back after terminated.
    again = agents.start("i-00000001")
    assert again.wait(15) == 3


def test_kill_9_agent_turns_ship_lost_in_time(mux: Mux, agents: Agents) -> None:
    proc = agents.start("i-00000004")
    mux.wait_state("i-00000004", ShipState.AVAILABLE)
    mux.registry.claim("bob")
    port = free_port()
    mux.wait_container(
        "i-00000004", mux.registry.set_container("i-00000004", server_spec(port, "v1"))
    )
    os.killpg(proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    mux.wait_state("i-00000004", ShipState.LOST, timeout=20)
    took = time.monotonic() - killed
    # lost after LOST_AFTER silent heartbeats, found by a checker running every heartbeat
    # (+2 s for scheduling on a busy CI machine)
    assert took <= HEARTBEAT * (LOST_AFTER + 1) + 2.0, took
    wait_for(lambda: get(port) is None, 5, "the container to die with its agent")
    assert mux.ship("i-00000004").owner == "bob"  # the spawner decides what to do with the claim


def test_failures_surface_with_their_reason(tmp_path: Path, mux: Mux, agents: Agents) -> None:
    bad_init = "import sys; sys.stderr.write('init.sh: cannot fetch lesson data\\n'); sys.exit(3)"
    spec = {"name": "p", "image": "tutorial:broken", "cmd": [sys.executable, "-c", bad_init]}
    probe = json.dumps({**spec, "port": free_port()})
    agents.start("i-0000000b", "--probe", probe)
    rec = mux.wait_state("i-0000000b", ShipState.FAILED)
    assert "boot failed" in rec.error and "init.sh: cannot fetch lesson data" in rec.error
    assert "exited with code 3" in rec.error
    assert mux.registry.claim("carol") is None  # a failed ship is never handed out

    agents.start("i-00000005")
    mux.wait_state("i-00000005", ShipState.AVAILABLE)
    mux.registry.claim("carol")
    good_port = free_port()
    mux.registry.set_container("i-00000005", server_spec(good_port, "v1", name="good"))
    gen = mux.registry.set_container(
        "i-00000005",
        ContainerSpec("broken", "tutorial:x", [sys.executable, "-c", bad_init], {}, 9999),
    )

    def settled():
        r = mux.ship("i-00000005")
        states = {c.name: c.state for c in r.containers}
        return (
            r.applied_generation >= gen and states == {"good": "running", "broken": "failed"} and r
        )

    rec = wait_for(settled, 15, "one project running, one failed")
    assert "init.sh: cannot fetch lesson data" in rec.container("broken").error
    assert rec.state is ShipState.RUNNING and rec.error == ""  # the ship and the other project live
    assert get(good_port) is not None


def test_mux_can_terminate_and_drain_a_ship(mux: Mux, agents: Agents) -> None:
    proc = agents.start("i-00000008")
    mux.wait_state("i-00000008", ShipState.AVAILABLE)
    mux.registry.claim("dave")
    port = free_port()
    mux.wait_container(
        "i-00000008", mux.registry.set_container("i-00000008", server_spec(port, "v1"))
    )
    mux.registry.set_drain(
        "i-00000008", True
    )  # drained: containers stop, ship available, unclaimable
    rec = mux.wait_state("i-00000008", ShipState.AVAILABLE)
    assert rec.containers == [] and get(port) is None
    mux.registry.release("i-00000008")
    assert mux.registry.claim("erin") is None  # still drained
    mux.registry.set_terminate("i-00000008", True)
    assert proc.wait(10) == 0
    assert mux.ship("i-00000008").state is ShipState.TERMINATED


def test_ship_declared_lost_stands_down(mux: Mux, agents: Agents) -> None:
    """A ship the mux gave up on (e.g. after a partition) stops using the attendee's volume."""
    proc = agents.start("i-00000006")
    mux.wait_state("i-00000006", ShipState.AVAILABLE)
    mux.registry.claim("frank")
    mux.registry.set_volume("i-00000006", "vol-frank")
    port = free_port()
    mux.wait_container(
        "i-00000006", mux.registry.set_container("i-00000006", server_spec(port, "v1"))
    )
    assert mux.registry.mark_lost(now=time.time() + 3600, timeout=1) == ["i-00000006"]
    assert proc.wait(10) == 0  # its next report is refused (lost), so it stands down
    assert mux.ship("i-00000006").state is ShipState.TERMINATED  # lost -> terminated is allowed
    assert get(port) is None
    assert mux.server.rejections["illegal"] >= 1


def test_ship_booted_while_the_mux_was_down_registers(mux: Mux, agents: Agents) -> None:
    """Its `booting` report was lost; it must still get in (booting, then available)."""
    mux.stop()
    agents.start("i-0000000e")
    time.sleep(1.5)  # boots fully (available) while nobody listens
    mux.start()
    mux.wait_state("i-0000000e", ShipState.AVAILABLE, timeout=10)
    assert mux.states["i-0000000e"] == ["booting", "available"]
    assert mux.server.rejections == dict.fromkeys(mux.server.rejections, 0)


def test_a_new_registry_is_obeyed_from_generation_zero(
    tmp_path: Path, mux: Mux, agents: Agents
) -> None:
    """The mux came back with a new registry file (generations restart at 0): the ship registers
    again, drops the claim nobody knows of any more, and obeys the new registry's orders."""
    agents.start("i-00000007")
    mux.wait_state("i-00000007", ShipState.AVAILABLE)
    mux.registry.claim("gina")
    old_port = free_port()
    for version in ("v1", "v2", "v3"):
        gen = mux.registry.set_container("i-00000007", server_spec(old_port, version))
    mux.wait_container("i-00000007", gen)
    assert gen == 3

    mux.stop()
    mux.db = tmp_path / "new-fleet.sqlite"
    mux.start()
    mux.wait_state("i-00000007", ShipState.AVAILABLE)
    wait_for(lambda: get(old_port) is None, 10, "the unknown claim's container to stop")
    # (It passes through `available` on its way back to `running` while the old container
    # still runs; it is free once it reports the container gone.)
    claimed = wait_for(lambda: mux.registry.claim("hugo"), 10, "the ship free again")
    assert claimed.ship_id == "i-00000007"
    port = free_port()
    gen = mux.registry.set_container("i-00000007", server_spec(port, "v1", greeting="hi hugo"))
    assert gen == 1  # below what the agent knew from the old registry
    mux.wait_container("i-00000007", gen)
    assert (get(port) or "").endswith("|hi hugo|v1")
