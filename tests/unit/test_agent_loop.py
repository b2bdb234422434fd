"""The agent's converge/refresh logic with a fake (Docker-like: pulls first) runtime."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from campfleet.agent.agent import Agent, check_cap
from campfleet.agent.config import AgentConfig
from campfleet.agent.runtime import Runtime, RuntimeFailure
from campfleet.agent.volume import LocalVolumes
from campfleet.protocol import ContainerSpec, Desired, ShipState


class FakeRuntime(Runtime):
    needs_pull = True

    def __init__(self, content: Optional[Path] = None) -> None:
        self.calls: list[tuple] = []
        self.dead: dict[str, str] = {}
        self.content_dir = content

    def pull(self, image: str) -> None:
        self.calls.append(("pull", image))
        if image.startswith("bad"):
            raise RuntimeFailure("docker pull failed (1): manifest unknown")

    def digest(self, spec: ContainerSpec) -> str:
        return "sha256:" + spec.image

    def content(self, image: str, scratch: Path) -> Optional[Path]:
        return self.content_dir

    def start(self, spec: ContainerSpec, workdir: Path) -> None:
        self.calls.append(("start", spec.name, spec.image, workdir))

    def exited(self, name: str) -> Optional[str]:
        return self.dead.get(name)

    def stop(self, name: str, timeout: float = 10.0) -> None:
        self.calls.append(("stop", name))


@pytest.fixture
def web_port():
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def make_agent(tmp_path: Path, runtime: Runtime) -> Agent:
    cfg = AgentConfig(
        mux_url="http://127.0.0.1:9",
        local=True,
        ship_id="s1",
        zone="z",
        address="127.0.0.1",
        state_dir=tmp_path / "state",
        volumes_root=tmp_path / "vols",
        heartbeat=0.2,
        start_timeout=2.0,
    )
    agent = Agent(cfg, runtime, LocalVolumes(cfg.volumes_root))
    agent.booting = False
    return agent


def settle(agent: Agent, desired: Desired, until, timeout: float = 5.0) -> None:
    assert agent.converge(desired)
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        agent.refresh()
        time.sleep(0.01)
    assert until(), agent.report()


def test_pull_then_start_in_volume_then_running(tmp_path: Path, web_port: int) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (content / "lesson.ipynb").write_text("v1")
    rt = FakeRuntime(content)
    agent = make_agent(tmp_path, rt)
    spec = ContainerSpec("", "good:1", ["x"], {"K": "V"}, web_port, "/")
    d = Desired(generation=3, containers=[spec], volume="vol-a")
    settle(agent, d, lambda: agent.containers[""].state == "running")
    vol = tmp_path / "vols" / "vol-a"
    assert rt.calls[:2] == [("pull", "good:1"), ("start", "", "good:1", vol)]
    assert (vol / "lesson.ipynb").read_text() == "v1"
    r = agent.report()
    assert (agent.state(), r.volume, r.generation) == (ShipState.RUNNING, "vol-a", 3)
    assert r.containers[0].digest == "sha256:good:1" and r.containers[0].state == "running"

    # redeploy to a new image keeps the volume; the old container is stopped first
    d2 = Desired(
        generation=4, containers=[ContainerSpec("", "good:2", ["x"], {}, web_port)], volume="vol-a"
    )
    settle(agent, d2, lambda: agent.containers[""].state == "running")
    assert rt.calls[-3:] == [("stop", ""), ("pull", "good:2"), ("start", "", "good:2", vol)]

    # drain: everything stops, volume released, the ship is available again
    settle(
        agent, Desired(generation=5, containers=[spec], volume="vol-a", drain=True), lambda: True
    )
    assert agent.containers == {} and agent.mounted is None
    assert agent.state() is ShipState.AVAILABLE and agent.report().generation == 5


def test_pull_failure_and_retry_on_new_generation(tmp_path: Path, web_port: int) -> None:
    rt = FakeRuntime()
    agent = make_agent(tmp_path, rt)
    bad = ContainerSpec("proj", "bad:1", ["x"], {}, web_port)
    settle(agent, Desired(1, [bad]), lambda: agent.containers["proj"].state == "failed")
    c = agent.report().containers[0]
    assert "pull bad:1: docker pull failed (1): manifest unknown" in c.error
    assert agent.state() is ShipState.RUNNING and agent.report().error == ""
    settle(agent, Desired(1, [bad]), lambda: True)
    assert [x for x in rt.calls if x[0] == "pull"] == [("pull", "bad:1")]  # same gen: no retry
    settle(agent, Desired(2, [bad]), lambda: agent.containers["proj"].state == "failed")
    assert [x for x in rt.calls if x[0] == "pull"] == [("pull", "bad:1")] * 2  # new gen: retried
    assert "bad:1" not in agent.pulled


def test_container_dying_and_health_timeout(tmp_path: Path, web_port: int) -> None:
    rt = FakeRuntime()
    agent = make_agent(tmp_path, rt)
    spec = ContainerSpec("a", "good:1", ["x"], {}, web_port)
    settle(agent, Desired(1, [spec]), lambda: agent.containers["a"].state == "running")
    rt.dead["a"] = "exited with code 137: Killed"
    agent.containers["a"].next_check = 0
    assert agent.refresh()
    assert agent.containers["a"].error == "exited with code 137: Killed"
    silent = ContainerSpec("b", "good:1", ["x"], {}, 9, "/health")  # nothing listens on :9
    settle(agent, Desired(2, [spec, silent]), lambda: agent.containers["b"].state == "failed")
    assert "health check GET :9/health did not pass within 2 s" in agent.containers["b"].error


def test_volume_change_restarts_containers_on_the_new_volume(tmp_path: Path, web_port: int) -> None:
    rt = FakeRuntime()
    agent = make_agent(tmp_path, rt)
    spec = ContainerSpec("", "good:1", ["x"], {}, web_port)
    settle(agent, Desired(1, [spec], "vol-a"), lambda: agent.containers[""].state == "running")
    settle(agent, Desired(2, [spec], "vol-b"), lambda: agent.containers[""].state == "running")
    # pulled once per agent; restarted on the new volume
    assert rt.calls[-2:] == [("stop", ""), ("start", "", "good:1", tmp_path / "vols" / "vol-b")]
    assert [x for x in rt.calls if x[0] == "pull"] == [("pull", "good:1")]
    assert agent.report().volume == "vol-b"


def test_unknown_to_the_registry_the_ship_steps_through_booting(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, FakeRuntime())
    agent.containers["x"] = object()  # type: ignore[assignment]  # a running attendee container
    assert agent.state() is ShipState.RUNNING
    steps = []
    for _ in range(3):  # what each accepted report would send next
        steps.append(agent.wire_state())
        agent.accepted = steps[-1]
    assert steps == [ShipState.BOOTING, ShipState.AVAILABLE, ShipState.RUNNING]
    agent.containers.clear()
    agent.accepted = None
    assert agent.wire_state() is ShipState.BOOTING  # e.g. the first report never arrived


def test_only_newer_desired_states_replace_unless_a_poll_proves_the_registry_went_back(
    tmp_path: Path,
) -> None:
    agent = make_agent(tmp_path, FakeRuntime())
    agent.offer(Desired(generation=3, volume="vol-a"))
    agent.offer(Desired(generation=2))  # a late answer (e.g. to a report): ignored
    assert agent.known_generation == 3 and agent.desired.volume == "vol-a"
    agent.offer(Desired(generation=2), polled=2)  # a poll sent before 3 was known: no proof
    assert agent.known_generation == 3
    agent.offer(Desired(generation=0), polled=3)  # the registry had 3, now says 0: new registry
    assert agent.known_generation == 0 and agent.desired == Desired() and not agent.converged
    agent.offer(Desired(generation=1, volume="vol-b"))  # and its orders are followed
    assert agent.desired.volume == "vol-b"


def test_health_checks_back_off_with_a_slow_start() -> None:
    assert check_cap(0.5) == check_cap(5.0) == 0.25  # quick starts: noticed within 0.25 s
    assert check_cap(20.0) == 1.0  # at most ~5 % late
    assert check_cap(600.0) == 2.0
