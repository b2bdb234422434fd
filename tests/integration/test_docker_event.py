"""A whole local event on the Docker runtime: hub, proxy, control API and agents on 127.0.0.1,
each attendee's server a real container of the built ship image (`campfleet local --runtime
docker`), reached through the hub as on AWS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from campfleet.local import LocalEvent, _processes_under, find_free_port
from tests.docker_kit import SCOPE_PREFIX, docker
from tests.integration.conftest import Admin, Attendee

pytestmark = [pytest.mark.docker, pytest.mark.slow]
BROKEN = ["sh", "-c", "echo 'init: tutorial data missing' >&2; exit 3"]


def progress(attendee: Attendee, server: str) -> list[dict]:
    events = []
    with attendee.http.get(
        f"{attendee.base}/hub/api/users/{attendee.name}/servers/{server}/progress",
        headers={"X-XSRFToken": attendee.xsrf()},
        stream=True,
        timeout=300,
    ) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith(b"data:"):
                events.append(json.loads(line[5:]))
                if events[-1].get("ready") or events[-1].get("failed"):
                    break
    return events


def test_attendees_get_real_containers_and_nothing_is_left_behind(
    tmp_path: Path,
    docker_images: dict[str, str],
) -> None:
    ship_image = docker_images["ship"]
    settings = dict(
        ships=2,
        port=find_free_port(2),
        state_dir=tmp_path / "event",
        runtime="docker",
        ship_image=ship_image,
        docker_scope=f"{SCOPE_PREFIX}ev",
        projects={"broken": {"image": ship_image, "cmd": BROKEN}},
    )
    event = LocalEvent(**settings)
    try:
        event.start()
        event.wait_ready(timeout=300)

        alice = Attendee(event, "alice")
        assert alice.login().status_code == 302
        alice.start_server(timeout=300)
        # The server is the image's jupyterhub-singleuser, as jovyan, on alice's volume.
        (container,) = event.containers()
        inspect = json.loads(docker("inspect", container))[0]
        assert inspect["Config"]["Image"] == ship_image and inspect["State"]["Running"]
        out = alice.run_code(
            "import os, sys; open('saved.txt', 'w').write('kept');"
            "print(os.getuid(), sys.executable, os.getcwd())"
        )
        uid, python, cwd = out.split()
        assert (uid, cwd) == ("1000", "/home/jovyan") and python.startswith("/opt/conda/bin/")
        (saved,) = event.volumes_root.glob("*/saved.txt")  # on alice's volume, nowhere else
        volume = saved.parent
        assert (volume / "saved.txt").read_text() == "kept"
        assert (volume / "saved.txt").stat().st_uid == 1000
        assert (volume / "welcome.ipynb").is_file()  # tutorial content layered in
        assert alice.server_get("api/contents/welcome.ipynb").status_code == 200

        # A project whose container exits non-zero: the attendee and the fleet page see why.
        bob = Attendee(event, "bob")
        assert bob.login().status_code == 302
        bob.http.get(f"{event.url}hub/spawn/bob/broken", timeout=60)
        events = progress(bob, "broken")
        assert events[-1].get("failed"), events
        shown = events[-1]["message"]
        assert "exited with code 3" in shown and "init: tutorial data missing" in shown
        fleet = Admin(event).api("GET", "/fleet").json()
        reasons = [f["reason"] for f in fleet["failures"] if f["attendee"] == "bob"]
        assert any("init: tutorial data missing" in r for r in reasons), fleet["failures"]

        # The event crashes (its supervisor, agents kill -9, hub gone): alice's container
        # outlives it ...
        event.stop_supervising()
        for ship_id in list(event.agents):
            event.kill_ship(ship_id)
        event.stop_hub()
        assert event.containers() == [container]
        # ... and the next run in this state directory removes it before it starts anything.
        event = LocalEvent(**settings)
        event.start(launch=0)
        assert event.containers() == []
    finally:
        event.stop()
    assert event.containers() == []
    assert _processes_under(event.state_dir) == []
    assert not any(p.name.startswith("env-") for p in event.state_dir.rglob("*"))
    assert os.path.isdir(event.volumes_root)  # the attendees' files stay for the next run
