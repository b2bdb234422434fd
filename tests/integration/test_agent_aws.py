"""AWS mode with fakes: identity from IMDSv2, Terminating:Wait -> clean stop + lifecycle action."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from campfleet.protocol import ShipState
from tests.integration.test_agent_local import AUTHORITY, HEARTBEAT, ROOT, Mux
from tests.unit.test_agent_aws import FakeImds

FAKE_AWS = """#!{python}
import json, os, sys
with open(os.environ["FAKE_AWS_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_identity_from_imds_and_termination_via_lifecycle_hook(tmp_path: Path) -> None:
    FakeImds.tokens = []
    FakeImds.data = {
        "instance-id": "i-0a0b0c0d",
        "placement/availability-zone": "eu-west-1c",
        "local-ipv4": "127.0.0.1",
        "autoscaling/target-lifecycle-state": "InService",
        # What the ship attests with (signed by the test authority the mux trusts).
        **{
            path: value.decode()
            for path, value in AUTHORITY.sign(
                AUTHORITY.document("i-0a0b0c0d", "127.0.0.1", "local", "eu-west-1c")
            ).items()
        },
    }
    imds = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeImds)
    threading.Thread(target=imds.serve_forever, daemon=True).start()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(FAKE_AWS.format(python=sys.executable))
    (bin_dir / "aws").chmod(0o755)
    mux = Mux(tmp_path)
    mux.instances.add(["i-0a0b0c0d"])
    config = {
        "muxUrl": f"http://127.0.0.1:{mux.port}",
        "heartbeat": HEARTBEAT,
        "region": "eu-west-1",
        "runtime": "local",
        "stateDir": str(tmp_path / "state"),
        "volumesRoot": str(tmp_path / "mnt"),
        "shipGroupName": "campfleet-dev-ships",
        "lifecycleHookName": "campfleet-drain",
        "imdsUrl": f"http://127.0.0.1:{imds.server_address[1]}",
    }
    (tmp_path / "agent.json").write_text(json.dumps(config))
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    env["FAKE_AWS_LOG"] = str(tmp_path / "aws.log")
    log = (tmp_path / "agent.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "campfleet.agent", "--config", str(tmp_path / "agent.json")],
        cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    try:
        rec = mux.wait_state("i-0a0b0c0d", ShipState.AVAILABLE)
        assert (rec.zone, rec.address) == ("eu-west-1c", "127.0.0.1")
        FakeImds.data["autoscaling/target-lifecycle-state"] = "Terminated"
        assert proc.wait(15) == 0
        assert mux.ship("i-0a0b0c0d").state is ShipState.TERMINATED
        calls = [json.loads(x) for x in (tmp_path / "aws.log").read_text().splitlines()]
        assert calls == [[
            "autoscaling", "complete-lifecycle-action",
            "--lifecycle-hook-name", "campfleet-drain",
            "--auto-scaling-group-name", "campfleet-dev-ships",
            "--instance-id", "i-0a0b0c0d",
            "--lifecycle-action-result", "CONTINUE",
            "--region", "eu-west-1",
        ]]  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        mux.stop()
        imds.shutdown()
        imds.server_close()
