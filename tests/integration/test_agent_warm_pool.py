"""Warm pool at the agent level, with a fake IMDSv2 and a fake `aws` CLI (issue 12).

What AWS does is simulated by the IMDS's target lifecycle state and by stopping/starting the
agent process with the same state directory (the ship's root volume survives a stop). What
cannot be shown here: a real EC2 stop/start, systemd starting the agent at boot, and Auto
Scaling's own timing (AWS's sample: 36 s out of the pool against 243 s cold).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from campfleet.agent import shipkey
from campfleet.agent.agent import TERMINATED_MARKER
from campfleet.agent.client import MuxClient, MuxRejected
from campfleet.protocol import FORGED, REPLAY, Report, ShipState
from tests.integration.test_agent_aws import FAKE_AWS
from tests.integration.test_agent_local import AUTHORITY, HEARTBEAT, ROOT, Mux
from tests.unit.test_agent_aws import FakeImds

GROUP = "campfleet-dev-ships"
LAUNCH_HOOK = "campfleet-dev-ships-launching"


class Ship:
    """One EC2 ship: a fake IMDS, a fake aws CLI and its agent process (restartable)."""

    def __init__(self, tmp: Path, mux: Mux) -> None:
        FakeImds.tokens = []
        FakeImds.data = {
            "instance-id": "i-0a7e5001",
            "placement/availability-zone": "eu-west-1a",
            "local-ipv4": "127.0.0.1",
        }
        self.new_run("2026-12-02T09:00:00Z")
        mux.instances.add(["i-0a7e5001"])
        self.imds = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeImds)
        threading.Thread(target=self.imds.serve_forever, daemon=True).start()
        self.tmp = tmp
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        (bin_dir / "aws").write_text(FAKE_AWS.format(python=sys.executable))
        (bin_dir / "aws").chmod(0o755)
        self.state_dir = tmp / "state"
        config = {
            "muxUrl": f"http://127.0.0.1:{mux.port}",
            "heartbeat": HEARTBEAT,
            "region": "eu-west-1",
            "runtime": "local",
            "stateDir": str(self.state_dir),
            "volumesRoot": str(tmp / "mnt"),
            "shipGroupName": GROUP,
            "lifecycleHookName": "campfleet-dev-ships-terminating",
            "launchHookName": LAUNCH_HOOK,
            "imdsUrl": f"http://127.0.0.1:{self.imds.server_address[1]}",
        }
        (tmp / "agent.json").write_text(json.dumps(config))
        self.env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        self.env["FAKE_AWS_LOG"] = str(tmp / "aws.log")
        self.proc: subprocess.Popen | None = None

    def new_run(self, pending_time: str) -> None:
        """EC2 (re)starts the instance: IMDS serves an identity document with this run's
        pendingTime, signed (here by the test authority the mux trusts)."""
        document = AUTHORITY.document(
            "i-0a7e5001", "127.0.0.1", "local", "eu-west-1a", pending_time=pending_time
        )
        FakeImds.data.update(
            {path: value.decode() for path, value in AUTHORITY.sign(document).items()}
        )

    def set_state(self, state: str) -> None:
        FakeImds.data["autoscaling/target-lifecycle-state"] = state

    def boot(self) -> None:
        """The instance starts: systemd starts the agent."""
        log = (self.tmp / "agent.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "campfleet.agent", "--config", str(self.tmp / "agent.json")],
            cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip

    def crash(self) -> None:
        """The agent dies (systemd restarts it on the same run of the instance)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(15)

    def stop_instance(self) -> int:
        """EC2 stops the instance: systemd sends the agent SIGTERM."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def hooks_completed(self) -> list[str]:
        try:
            lines = (self.tmp / "aws.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(x)[3] for x in lines]  # the --lifecycle-hook-name value

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.imds.shutdown()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def world(tmp_path: Path):
    mux = Mux(tmp_path / "mux")
    ship = Ship(tmp_path, mux)
    yield mux, ship
    ship.close()
    mux.stop()


def test_warm_up_stop_start_then_serve_and_report(world) -> None:
    mux, ship = world
    # Launched into the warm pool: prepares, completes the launch hook, reports nothing.
    ship.set_state("Warmed:Stopped")
    ship.boot()
    wait_for(lambda: ship.hooks_completed() == [LAUNCH_HOOK], 15, "the launch hook")
    time.sleep(3 * HEARTBEAT)
    assert mux.ship("i-0a7e5001") is None  # the mux never hears of a ship in the pool
    assert ship.proc.poll() is None  # waits to be stopped (systemd would restart an exit)

    # AWS stops it: the agent ends cleanly, without a report and without the terminated
    # marker that would keep it from ever serving.
    assert ship.stop_instance() == 0
    assert not (ship.state_dir / TERMINATED_MARKER).exists()
    assert mux.ship("i-0a7e5001") is None

    # Out of the pool: the instance starts again from its warm disk and the agent serves.
    ship.set_state("InService")
    ship.boot()
    record = mux.wait_state("i-0a7e5001", ShipState.AVAILABLE)
    assert (record.zone, record.address) == ("eu-west-1a", "127.0.0.1")
    wait_for(lambda: ship.hooks_completed() == [LAUNCH_HOOK] * 2, 15, "the second hook")

    # And it ends like any ship: scale-in terminates it with a report.
    ship.set_state("Terminated")
    assert ship.proc.wait(15) == 0
    assert mux.ship("i-0a7e5001").state is ShipState.TERMINATED
    assert ship.hooks_completed()[-1] == "campfleet-dev-ships-terminating"


def test_warm_running_pool_moves_in_service_without_a_reboot(world) -> None:
    mux, ship = world
    ship.set_state("Warmed:Running")
    ship.boot()
    wait_for(lambda: ship.hooks_completed() == [LAUNCH_HOOK], 15, "the launch hook")
    assert mux.ship("i-0a7e5001") is None
    ship.set_state("InService")
    mux.wait_state("i-0a7e5001", ShipState.AVAILABLE)
    assert ship.proc.poll() is None


def test_stop_start_keeps_or_renews_the_ship_key(world) -> None:
    """The key file survives agent restarts and stop/start (root volume): no new attestation.
    Without it, the same run of the instance may not attest again once its key was used; a
    new run (EC2 sets a new pendingTime at each start) may, and the old key stops working."""
    mux, ship = world
    key_file = ship.state_dir / shipkey.KEY_FILE
    ship.set_state("InService")
    ship.boot()
    mux.wait_state("i-0a7e5001", ShipState.AVAILABLE)
    first = shipkey.load(key_file, "i-0a7e5001")
    assert first is not None and mux.server.attested == 1
    assert key_file.stat().st_mode & 0o777 == 0o600

    # Restart with the key on disk: the same key, no attestation, reports accepted.
    ship.crash()
    seq = mux.registry.last_seq("i-0a7e5001")
    ship.boot()
    wait_for(lambda: mux.registry.last_seq("i-0a7e5001") > seq, 15, "a report after restart")
    assert mux.server.attested == 1 and shipkey.load(key_file, "i-0a7e5001") == first

    # The key file is lost on the same run: re-attesting is refused (the document is static,
    # so a copy of it must not buy a second key).
    ship.crash()
    key_file.unlink()
    replays = mux.server.rejections[REPLAY]
    ship.boot()
    wait_for(lambda: mux.server.rejections[REPLAY] > replays, 15, "the refused re-attestation")
    assert mux.server.attested == 1 and not key_file.exists()
    assert "already attested for this run" in (ship.tmp / "agent.log").read_text()

    # Stopped and started (a warm pool's way back into service): a new run attests anew.
    ship.crash()
    ship.new_run("2026-12-02T10:30:00Z")
    ship.boot()
    wait_for(lambda: mux.server.attested == 2, 15, "the new run's attestation")
    second = shipkey.load(key_file, "i-0a7e5001")
    assert second is not None and second != first
    # Whoever kept the old key (a copy of the old disk) can no longer sign for the ship.
    stale = MuxClient(f"http://127.0.0.1:{mux.port}", "i-0a7e5001", first)
    report = Report("i-0a7e5001", "eu-west-1a", "127.0.0.1", 8888, ShipState.BOOTING)
    with pytest.raises(MuxRejected) as refused:
        stale.report(report)
    assert refused.value.kind == FORGED
