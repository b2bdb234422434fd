"""The agent's Docker path end to end, with a fake `docker` that runs the command as a process.

Real Docker cannot run here: this checks what the agent asks of the docker CLI (pull before
start, env through --env-file, the volume mount, health, stop) with a stand-in that records its
argv and starts the container's command as a plain process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from campfleet.protocol import ContainerSpec, ShipState
from tests.integration.test_agent_local import Agents, Mux, free_port, get, server_spec, wait_for

FAKE_DOCKER = r"""#!{python}
import json, os, signal, subprocess, sys, time
state = os.environ["FAKE_DOCKER_STATE"]
args = sys.argv[1:]
with open(os.path.join(state, "argv.log"), "a") as f:
    f.write(json.dumps(args) + "\n")
def box(name):
    return os.path.join(state, name + ".json")
def alive(name):
    try:
        pid = json.load(open(box(name)))["pid"]
        return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z"
    except (OSError, ValueError):
        return False
def kill(name):  # like `docker stop`: returns once the container is gone
    try:
        os.killpg(json.load(open(box(name)))["pid"], signal.SIGKILL)
    except (OSError, ValueError):
        return
    for _ in range(500):
        if not alive(name):
            return
        time.sleep(0.01)
cmd = args[0]
if cmd == "info":
    print("24.0.7")
elif cmd == "ps":
    print("\n".join(n[:-5] for n in os.listdir(state) if n.endswith(".json")))
elif cmd == "rm":
    for name in args[2:]:
        kill(name)
        if os.path.exists(box(name)):
            os.unlink(box(name))
elif cmd == "pull":
    if args[-1].startswith("missing"):
        sys.exit("Error response from daemon: manifest unknown")
elif cmd == "image":
    print(args[-1].split(":")[0] + "@sha256:" + "%064x" % abs(hash(args[-1])) + "|sha256:id")
elif cmd == "run":
    name = args[args.index("--name") + 1]
    env = dict(os.environ)
    for line in open(args[args.index("--env-file") + 1]):
        k, _, v = line.rstrip("\n").partition("=")
        env[k] = v
    workdir = args[args.index("--volume") + 1].split(":")[0]
    image_at = args.index("--volume") + 2
    proc = subprocess.Popen(args[image_at + 1:], cwd=workdir, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    json.dump({"pid": proc.pid}, open(box(name), "w"))
    print("c0ffee" + name)
elif cmd == "inspect":
    print("true 0" if alive(args[-1]) else "false 137")
elif cmd == "stop":
    kill(args[-1])
elif cmd == "create":
    print("cid-content")
elif cmd == "cp":
    sys.exit("Error: Could not find the file /srv/campfleet/content in container cid-content")
"""


def test_agent_drives_docker_cli(tmp_path: Path, monkeypatch) -> None:
    bin_dir, state = tmp_path / "bin", tmp_path / "docker-state"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER.replace("{python}", sys.executable))
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(state))
    mux = Mux(tmp_path)
    agents = Agents(tmp_path, mux)
    try:
        proc = agents.start("i-0000000d", "--runtime", "docker", "--image", "tutorial:v1")
        mux.wait_state("i-0000000d", ShipState.AVAILABLE)
        mux.registry.claim("alice")
        mux.registry.set_volume("i-0000000d", "vol-alice")
        port = free_port()
        spec = server_spec(port, "v1", greeting="token-abc123")  # stands in for a secret
        rec = mux.wait_container("i-0000000d", mux.registry.set_container("i-0000000d", spec))
        assert get(port) == f"{agents.volumes / 'vol-alice'}|token-abc123|v1"
        assert rec.container("").digest.startswith("sha256:")

        calls = [json.loads(x) for x in (state / "argv.log").read_text().splitlines()]
        verbs = [c[0] for c in calls]
        assert verbs[:3] == ["info", "ps", "pull"]  # boot: runtime check, cleanup, pre-pull
        assert verbs.count("pull") == 1  # tutorial:v1 was pre-pulled, not pulled again
        run = next(c for c in calls if c[0] == "run")
        assert "token-abc123" not in " ".join(run)
        assert run[run.index("--volume") + 1] == f"{agents.volumes / 'vol-alice'}:/home/jovyan"

        gen = mux.registry.set_container(
            "i-0000000d", server_spec(port, "v2", greeting="token-abc123")
        )
        mux.wait_container("i-0000000d", gen)  # tutorial:v2 pulled, then run on the same volume
        wait_for(lambda: (get(port) or "").endswith("|v2"), 10, "redeployed container")
        missing = ContainerSpec("extra", "missing:1", ["x"], {}, free_port())
        gen = mux.registry.set_container("i-0000000d", missing)

        def refused():
            c = (
                (r := mux.ship("i-0000000d"))
                and r.applied_generation >= gen
                and r.container("extra")
            )
            return c and c.state == "failed" and c

        assert "manifest unknown" in wait_for(refused, 10, "the pull failure").error
        assert get(port).endswith("|v2")  # the other project keeps running

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert mux.ship("i-0000000d").state is ShipState.TERMINATED
        assert get(port) is None
        assert list(state.glob("*.json")) == []  # stopped and removed
    finally:
        agents.close()
        for box in state.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                os.killpg(json.loads(box.read_text())["pid"], signal.SIGKILL)
        mux.stop()
