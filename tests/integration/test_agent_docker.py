"""The agent's Docker runtime against the real engine, with the real ship image pulled by
digest from a local registry (Debian's docker-registry, standing in for ECR).

The agents are real processes talking to a real control API (the harness of
test_agent_local); their containers are real containers of images/ship/Dockerfile. The server
in them is the image's own Python serving the attendee's home (the hub path is covered by
test_docker_event.py): what is checked here is what the agent does with Docker.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from campfleet.agent.docker import SCOPE_LABEL
from campfleet.contracts import paths
from campfleet.images import SHIP_TAG
from campfleet.protocol import ContainerSpec, ShipState
from tests.docker_kit import (
    SCOPE_PREFIX,
    LocalRegistry,
    derived_image,
    docker,
)
from tests.integration.test_agent_local import Agents, Mux, free_port, get, wait_for

pytestmark = pytest.mark.docker
START = 90  # seconds: a cold container start on a loaded 2-core CI machine


@pytest.fixture(scope="module")
def ship_digests(
    local_registry: LocalRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, str]:
    """The ship image as v1, and a "fixed" v2 with new tutorial content, both by digest."""
    v1 = local_registry.push(SHIP_TAG, "campfleet-ship", "v1")
    fixed = derived_image(
        SHIP_TAG,
        f"campfleet-ship-test:{uuid.uuid4().hex[:8]}",
        {"/srv/campfleet/content/whats-new.md": "# Fixed in v2\n"},
        tmp_path_factory.mktemp("v2"),
    )
    v2 = local_registry.push(fixed, "campfleet-ship", "v2")
    docker("rmi", fixed)
    return v1, v2


@pytest.fixture
def mux(tmp_path: Path) -> Iterator[Mux]:
    m = Mux(tmp_path, heartbeat=3.0)  # lost after 9 s: docker calls block the agent loop
    yield m
    if m.registry is not None:
        m.stop()


@pytest.fixture
def scope() -> Iterator[str]:
    """This test's agent scope; its containers are removed at the end, whatever happened."""
    name = f"{SCOPE_PREFIX}{uuid.uuid4().hex[:6]}"
    yield name
    ids = docker("ps", "-aq", "--filter", f"label={SCOPE_LABEL}={name}").split()
    if ids:
        docker("rm", "-f", *ids, check=False)


@pytest.fixture
def agents(tmp_path: Path, mux: Mux) -> Iterator[Agents]:
    a = Agents(tmp_path, mux)
    yield a
    a.close()


def containers(scope: str) -> list[str]:
    """Names of this scope's containers, running or not."""
    out = docker("ps", "-a", "--filter", f"label={SCOPE_LABEL}={scope}", "--format", "{{.Names}}")
    return sorted(out.split())


def serve_spec(image: str, port: int, token: str = "", cmd: list[str] | None = None):
    """The image's Python serving the home directory; records the env token it was given."""
    script = (
        'printf %s "$HUB_TOKEN" > "$HOME/.token-seen" && '
        f"exec python -m http.server {port} --bind 127.0.0.1 --directory /home/jovyan"
    )
    return ContainerSpec(
        name="",
        image=image,
        cmd=cmd or ["sh", "-c", script],
        env={"HUB_TOKEN": token, "HOME": "/home/jovyan"},
        port=port,
        health_path="/",
    )


def start_agent(agents: Agents, ship: str, scope: str, *images: str):
    pulls = [arg for image in images for arg in ("--image", image)]
    return agents.start(
        ship, "--runtime", "docker", "--docker-scope", scope, "--start-timeout", str(START), *pulls
    )


class ArgvWatch:
    """Scans every process's argv (what `ps` shows) for a secret while a start runs."""

    def __init__(self, secret: str) -> None:
        self.secret, self.seen, self._stop = secret.encode(), [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) == os.getpid():
                    continue
                try:
                    argv = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if self.secret in argv:
                    self.seen.append(argv.replace(b"\0", b" ").decode(errors="replace"))
            self._stop.wait(0.005)

    def stop(self) -> list[str]:
        self._stop.set()
        self.thread.join(5)
        return self.seen


def test_pull_by_digest_redeploy_and_agent_restart_keep_the_attendees_files(
    tmp_path: Path,
    mux: Mux,
    agents: Agents,
    scope: str,
    ship_digests: tuple[str, str],
    local_registry: LocalRegistry,
) -> None:
    v1, v2 = ship_digests
    ship = "i-d0c4e200000000001"
    proc = start_agent(agents, ship, scope, v1)
    mux.wait_state(ship, ShipState.AVAILABLE, timeout=START)
    assert mux.registry.get(ship).error == ""
    assert local_registry.served(v1)  # pulled at boot, by digest, from the registry

    mux.registry.claim("alice")
    mux.registry.set_volume(ship, "vol-alice")
    port, token = free_port(), f"hub-token-{uuid.uuid4().hex}"
    watch = ArgvWatch(token)
    try:
        gen = mux.registry.set_container(ship, serve_spec(v1, port, token))
        rec = mux.wait_container(ship, gen, timeout=START)
    finally:
        leaked = watch.stop()
    assert leaked == [], f"the hub token was on a process's argv: {leaked}"
    home = agents.volumes / "vol-alice"
    # The env reached the container; the env file did not outlive `docker run`.
    assert (home / ".token-seen").read_text() == token
    assert not list((tmp_path / "state" / ship).glob("env-*"))
    # Pulled from the registry by digest, and the ship reports that digest.
    assert rec.container("").digest == v1.rpartition("@")[2]
    assert rec.container("").image == v1
    # Tutorial content layered into the home, all of it the attendee's (uid 1000).
    assert (home / "welcome.ipynb").is_file() and "welcome.ipynb" in get(port)
    assert {p.stat().st_uid for p in [home, *home.iterdir()]} == {1000}

    # The attendee works in the container: a new file, and an edit of a tutorial file.
    (name,) = containers(scope)
    docker("exec", name, "sh", "-c", "echo my-work > ~/mine.txt && echo edit >> ~/README.md")
    assert (home / "mine.txt").stat().st_uid == 1000
    edited = (home / "README.md").read_text()

    # Redeploy to a new digest: pulled, run on the same volume; files kept, new content added.
    gen = mux.registry.set_container(ship, serve_spec(v2, port, token))
    rec = mux.wait_container(ship, gen, timeout=START)
    assert rec.container("").digest == v2.rpartition("@")[2] and local_registry.served(v2)
    assert (home / "mine.txt").read_text() == "my-work\n"
    assert (home / "README.md").read_text() == edited
    assert (home / "whats-new.md").read_text() == "# Fixed in v2\n"
    assert len(containers(scope)) == 1

    # The agent crashes (kill -9) and comes back: it cleans up the container it lost track of
    # and runs the desired one again: one container, same name, same files.
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert len(containers(scope)) == 1  # orphaned, still running
    before = docker("inspect", "--format", "{{.Id}}", name)
    proc = start_agent(agents, ship, scope, v2)
    wait_for(
        lambda: (r := mux.ship(ship)) and r.state is ShipState.RUNNING
        and r.container("") and r.container("").state == "running"
        and docker("inspect", "--format", "{{.Id}}", name, check=False) not in ("", before),
        START, "the restarted agent running the container again",
    )  # fmt: skip
    assert containers(scope) == [name]
    assert "welcome.ipynb" in get(port)
    assert (home / "mine.txt").read_text() == "my-work\n"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert mux.ship(ship).state is ShipState.TERMINATED
    assert containers(scope) == []


def test_a_container_that_exits_non_zero_fails_with_its_log(
    mux: Mux, agents: Agents, scope: str, ship_digests: tuple[str, str]
) -> None:
    v1, _ = ship_digests
    ship = "i-d0c4e200000000002"
    start_agent(agents, ship, scope, v1)
    mux.wait_state(ship, ShipState.AVAILABLE, timeout=START)
    mux.registry.claim("bob")
    broken = ["sh", "-c", "echo starting; echo 'init: tutorial data missing' >&2; exit 3"]
    gen = mux.registry.set_container(ship, serve_spec(v1, free_port(), cmd=broken))
    rec = mux.wait_container(ship, gen, state="failed", timeout=START)
    error = rec.container("").error
    assert "exited with code 3" in error
    assert "init: tutorial data missing" in error and "starting" in error


def test_the_attendee_cannot_reach_the_secret_the_socket_or_the_agent_state(
    tmp_path: Path, mux: Mux, agents: Agents, scope: str, ship_digests: tuple[str, str]
) -> None:
    v1, _ = ship_digests
    ship = "i-d0c4e200000000003"
    start_agent(agents, ship, scope, v1)
    mux.wait_state(ship, ShipState.AVAILABLE, timeout=START)
    mux.registry.claim("eve")
    mux.registry.set_volume(ship, "vol-eve")
    gen = mux.registry.set_container(ship, serve_spec(v1, free_port(), "t"))
    mux.wait_container(ship, gen, timeout=START)
    (name,) = containers(scope)
    # The ship's secret is its own control key (issue 15: ships hold no fleet-wide secret),
    # kept in the agent's state directory; its identity document sits beside it.
    state = tmp_path / "state" / ship
    secret, identity = state / paths.SHIP_KEY_FILE, agents.identity_dir(ship)
    key = json.loads(secret.read_text())["key"]
    assert state.is_dir() and identity.is_dir() and Path("/var/run/docker.sock").exists()

    def as_attendee(script: str) -> str:
        return docker("exec", name, "sh", "-c", script, check=False)

    assert as_attendee("id -u; id -g") == "1000\n100"
    assert as_attendee("grep CapEff /proc/self/status").split()[-1] == "0" * 16
    for path in (secret, state, identity, Path("/var/run/docker.sock"), Path("/run/docker.sock")):
        assert as_attendee(f"test -e {path} && echo REACHABLE || echo gone") == "gone", path
    # Not through the volume either: it holds the attendee's files only.
    assert as_attendee(f"grep -rl {key} ~ /srv /tmp 2>/dev/null; echo done") == "done"


LIMIT_MIB, LIMIT_PIDS = 256, 96
HOG = """
import sys
hold = []
while True:  # 16 MiB at a time, each page touched, until the kernel says no
    hold.append(bytearray(16 << 20))
    print(len(hold) * 16, flush=True)
"""
FORK = """
import os, signal, time
kids = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        kids.append(pid)
except OSError as e:
    print(len(kids), e.errno, flush=True)
time.sleep(float(os.environ.get("HOLD", "0")))
for pid in kids:
    os.kill(pid, signal.SIGKILL)
"""


def test_runaway_notebook_is_contained_and_the_ship_keeps_answering(
    mux: Mux, agents: Agents, scope: str, ship_digests: tuple[str, str]
) -> None:
    """Memory (no swap) and process limits from agent.json reach `docker run`; a notebook that
    allocates past its limit is killed inside its container, a fork bomb stops at the process
    cap, and the agent keeps reporting the ship all along (issue 15)."""
    v1, _ = ship_digests
    ship = "i-d0c4e200000000015"
    agents.start(
        ship, "--runtime", "docker", "--docker-scope", scope, "--start-timeout", str(START),
        "--image", v1,
        "--container-memory-mib", str(LIMIT_MIB), "--container-pids-limit", str(LIMIT_PIDS),
    )  # fmt: skip
    mux.wait_state(ship, ShipState.AVAILABLE, timeout=START)
    mux.registry.claim("mallory")
    mux.registry.set_volume(ship, "vol-mallory")
    port = free_port()
    gen = mux.registry.set_container(ship, serve_spec(v1, port))
    mux.wait_container(ship, gen, timeout=START)
    (name,) = containers(scope)
    host = json.loads(docker("inspect", "--format", "{{json .HostConfig}}", name))
    assert host["Memory"] == LIMIT_MIB << 20
    assert host["MemorySwap"] == LIMIT_MIB << 20  # equal: no swap on top
    assert host["PidsLimit"] == LIMIT_PIDS

    # Memory: the hog is killed by the kernel inside the container's cgroup (exit 137)
    # after it got close to the limit, never far past it; the server beside it still serves.
    done = subprocess.run(
        ["docker", "exec", name, "python", "-c", HOG],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    got = [int(line) for line in done.stdout.split()]
    assert done.returncode == 137, (done.returncode, done.stderr[-500:])
    assert got and LIMIT_MIB // 2 <= got[-1] <= LIMIT_MIB, got[-3:]
    assert docker("inspect", "--format", "{{.State.Running}}", name) == "true"
    assert "welcome.ipynb" in (get(port) or "")

    # Processes: forking stops at the cap (EAGAIN) while the children hold their pids; the
    # agent keeps reporting meanwhile (the container's own server, which needs a thread per
    # request, is stuck at the cap with it), and once the bomb is gone the server answers.
    bomb = subprocess.Popen(
        ["docker", "exec", "-e", "HOLD=15", name, "python", "-c", FORK],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready, _, _ = select.select([bomb.stdout], [], [], 60)
        assert ready, "the fork bomb did not reach the process cap within 60 s"
        forked, errno = (int(x) for x in bomb.stdout.readline().split())
        # The children still hold their pids here (for HOLD seconds).
        at_cap = time.time()
        wait_for(
            lambda: mux.ship(ship).last_seen > at_cap,
            10, "a report from the agent while the container sits at its process cap",
        )  # fmt: skip
        _, err = bomb.communicate(timeout=60)
    finally:
        if bomb.poll() is None:
            bomb.kill()
    assert forked < LIMIT_PIDS and errno == 11, (forked, errno, err[-300:])  # EAGAIN at the cap
    wait_for(lambda: "welcome.ipynb" in (get(port) or ""), 30, "the server after the bomb")
    record = mux.ship(ship)
    assert record.state is ShipState.RUNNING and record.container("").state == "running"
