"""The mux image runs the hub and the proxy as the mux user data starts them: two containers of
the same image (the proxy outlives hub restarts), host network, the state directory mounted at
/var/lib/campfleet, settings at /etc/campfleet/mux.json (userdata/mux.yaml's `docker run`s).
The settings are a local event's (secrets in files, volumes as directories): SSM and EC2 are
AWS's and are covered against moto elsewhere.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
import requests

from campfleet.contracts import paths
from campfleet.local import LocalEvent, find_free_port
from tests.docker_kit import TEST_LABEL, docker

pytestmark = pytest.mark.docker
STATE = str(paths.MUX_STATE_DIR)


def test_the_mux_image_serves_the_login_page_and_logs_in(
    tmp_path: Path,
    docker_images: dict[str, str],
) -> None:
    host_state = tmp_path / "state"
    event = LocalEvent(ships=1, port=find_free_port(1), state_dir=host_state)
    for d in (event.secrets_dir, event.hub_dir, event.volumes_root):
        d.mkdir(parents=True)
    event._write_secrets()
    event.authority  # noqa: B018 - the ships' identity authority, whose certificate mux.json names
    event._write_settings()
    # The same file, with the paths the container sees.
    settings = event.settings_path.read_text().replace(str(host_state), STATE)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / paths.MUX_SETTINGS_FILE).write_text(settings)
    assert json.loads(settings)["local"]["stateDir"] == f"{STATE}/hub"

    name = f"campfleet-test-mux-{uuid.uuid4().hex[:8]}"
    names = {"hub": name, "proxy": f"{name}-proxy"}
    for service, command in (("proxy", ["python", "-m", "campfleet.mux.proxy"]), ("hub", [])):
        docker(
            "run", "--detach", "--name", names[service], "--label", TEST_LABEL,
            "--network", "host",
            "-v", f"{etc}:{paths.SETTINGS_DIR}:ro", "-v", f"{host_state}:{STATE}",
            docker_images["mux"], *command,
        )  # fmt: skip
    try:
        web = requests.Session()
        deadline = time.monotonic() + 120
        while True:
            try:
                page = web.get(f"{event.url}hub/login", timeout=5)
                if page.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            running = {
                docker("inspect", "--format", "{{.State.Running}}", n) for n in names.values()
            }
            if running != {"true"} or time.monotonic() > deadline:
                logs = " | ".join(
                    f"{service}: {docker('logs', '--tail', '20', n, check=False)[-1000:]}"
                    for service, n in names.items()
                )
                raise AssertionError(f"the mux did not serve its login page: {logs}")
            time.sleep(0.5)
        assert 'name="password"' in page.text
        xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text).group(1)
        login = web.post(
            f"{event.url}hub/login",
            data={"username": "alice", "password": event.password, "_xsrf": xsrf},
            allow_redirects=False,
            timeout=30,
        )
        assert login.status_code == 302 and "login" not in login.headers["Location"]
        home = web.get(f"{event.url}hub/home", timeout=30)
        assert home.status_code == 200 and "alice" in home.text
        # The hub's state is on the host's volume, where a restarted mux finds it.
        assert (event.hub_dir / paths.HUB_DB_FILE).exists()
        assert (event.hub_dir / paths.REGISTRY_FILE).exists()
    finally:
        docker("rm", "-f", *names.values(), check=False)
