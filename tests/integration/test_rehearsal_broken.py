"""Issue 10, "must be shown": a broken ship powers itself off with the reason on its console, as
the ship init script promises, and a broken agent start shows as `failed` with its reason.

One small rehearsal: the mux (the agent reports to it) and two ships, each booting the rendered
ship user data with one deliberate fault:
- ship 0 names a ship image digest the registry does not hold (as if `pulumi up` rendered an
  image whose push was lost): the init script's `docker pull` fails, it writes why on the
  console and schedules the poweroff (after a 10-minute grace: this test reads the schedule
  systemd keeps, then stops the host before the grace ends);
- ship 1's agent.json asks the agent to pre-pull an image the registry does not hold: the init
  script succeeds, the agent's boot fails, it reports `failed` with the reason to the mux,
  and the rehearsal's per-host progress shows that reason from the mux's registry.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from campfleet.rehearsal import hosts
from campfleet.rehearsal.aws import LocalAws
from campfleet.rehearsal.rehearsal import FAILED, Rehearsal
from tests.integration.rehearsal_kit import assert_nothing_left, project

pytestmark = [pytest.mark.docker, pytest.mark.slow]
MISSING = "sha256:" + hashlib.sha256(b"campfleet rehearsal: never pushed").hexdigest()
GRACE = 600  # `shutdown -h +10` in userdata/ship.yaml


def image_missing(user_data: str) -> str:
    """The ship image's digest replaced by one the registry does not hold."""
    digests = set(re.findall(r"retry docker pull \S+@(sha256:[0-9a-f]{64})", user_data))
    assert len(digests) == 1, digests
    return user_data.replace(digests.pop(), MISSING)


def agent_prepulls_a_missing_image(user_data: str) -> str:
    """agent.json (a JSON string in the YAML) gains `images`: one the registry does not hold."""
    [registry] = set(re.findall(r"([0-9]{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com)", user_data))
    anchor = r"\"runtime\": \"docker\","
    assert user_data.count(anchor) == 1
    missing = f"{registry}/campfleet-missing@{MISSING}"
    return user_data.replace(anchor, rf"\"images\": [\"{missing}\"],\n  {anchor}")


FAULTS = {0: image_missing, 1: agent_prepulls_a_missing_image}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    from campfleet.cli import stack_values

    project_dir, stack = project(tmp_path_factory.mktemp("broken") / "project", ships=2)
    lines: list[str] = []
    run = Rehearsal(
        project_dir,
        stack,
        stack_values(project_dir, stack),
        port=0,
        say=lines.append,
        aws_factory=LocalAws,
    )
    run.ship_user_data_for = lambda index, text: FAULTS[index](text)
    try:
        run.start()
        ships = [run.name("ship", index) for index in FAULTS]
        deadline = time.monotonic() + 1200
        while not all(run.poll()[name].phase == FAILED for name in ships):
            if time.monotonic() > deadline:
                details = [f"{h.name} {h.phase}: {h.detail}" for h in run.hosts.values()]
                raise AssertionError(
                    "\n".join(["the broken ships did not fail:", *lines, *details])
                )
            time.sleep(3)
        yield run
    finally:
        run.stop()
        assert_nothing_left(stack)


def test_a_ship_whose_image_is_missing_powers_off_with_the_reason_on_its_console(
    rehearsal: Rehearsal,
) -> None:
    status = rehearsal.hosts[rehearsal.name("ship", 0)]
    assert status.phase == FAILED
    seed = hosts.host_exec(status.name, "cat", "/var/lib/cloud/seed/nocloud/user-data").stdout
    assert MISSING in seed and seed == image_missing(rehearsal.rendered.ship_user_data)
    # The console (the host container's TTY, `docker logs`) says why, as the script promises.
    console = subprocess.run(
        ["docker", "logs", status.name], capture_output=True, text=True, timeout=60
    ).stdout
    told = [line.strip() for line in console.splitlines() if "campfleet-ship-init: failed" in line]
    assert told, console[-2000:]
    said = told[-1]
    ship_image = rehearsal.rendered.images["ship"]
    assert f"'docker pull {ship_image}@{MISSING}' failed 10 times" in said, said
    assert "manifest unknown" in said or "not found" in said, said
    assert said.endswith("powering off in 10 minutes")
    # systemd holds the poweroff, due the grace period after the failure.
    mode, when = hosts.scheduled_shutdown(status.name) or ("", 0.0)
    assert mode == "poweroff"
    failed_at = status.started + status.phase_times[FAILED]  # monotonic
    due_in = when - time.time()
    assert GRACE - (time.monotonic() - failed_at) - 60 < due_in <= GRACE, due_in
    # `campfleet rehearse` shows the failing step, the console's reason and the schedule.
    assert "scripts_user" in status.detail or "runcmd" in status.detail, status.detail
    assert f"console: {said}" in status.detail
    assert "systemd: poweroff scheduled for" in status.detail
    # The host is still up (the grace period) and its agent never started.
    agent = hosts.host_exec(status.name, "systemctl", "is-enabled", "campfleet-agent")
    assert agent.stdout.strip() != "enabled", agent.stdout


def test_a_broken_agent_start_shows_failed_with_its_reason(rehearsal: Rehearsal) -> None:
    status = rehearsal.hosts[rehearsal.name("ship", 1)]
    assert status.phase == FAILED
    # The init script finished: cloud-init is done and the agent runs (it reports, it did
    # not crash), so the ship is not powering off.
    assert hosts.cloud_init(status.name).status == "done"
    assert hosts.unit_state(status.name, "campfleet-agent") == "active"
    assert hosts.scheduled_shutdown(status.name) is None
    # The mux's registry holds the ship as failed with the agent's reason ...
    state, error = rehearsal.ship_rows()[status.instance_id]
    assert state == "failed"
    assert error.startswith("boot failed: docker pull failed"), error
    # ... and that is what `campfleet rehearse` shows for the host.
    assert status.detail == f"the agent reports failed: {error}"
