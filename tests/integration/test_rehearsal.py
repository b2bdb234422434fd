"""The issue-10 rehearsal, end to end: the stack's rendered user data boots a mux and ships
(systemd hosts, cloud-init, nested Docker) against the local AWS, and what the user data
promises holds there. One rehearsal is shared by the module (it takes minutes to boot)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from campfleet.rehearsal.aws import LocalAws
from campfleet.rehearsal.rehearsal import AVAILABLE, Rehearsal
from tests.integration.rehearsal_kit import assert_nothing_left, project

pytestmark = [pytest.mark.docker, pytest.mark.slow]
SHIPS = 2  # ship 0 serves the checks; the last one is terminated by its test


def host(name: str, *argv: str, user: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    who = ["--user", user] if user else []
    return subprocess.run(
        ["docker", "exec", *who, name, *argv],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    from campfleet.cli import stack_values

    project_dir, stack = project(tmp_path_factory.mktemp("rehearsal") / "project", ships=SHIPS)
    lines: list[str] = []
    run = Rehearsal(
        project_dir,
        stack,
        stack_values(project_dir, stack),
        port=0,
        say=lines.append,
        aws_factory=LocalAws,
    )
    try:
        try:
            run.start()
            run.wait_ready(timeout=1200)
        except Exception as exc:
            details = [f"{h.name} {h.phase}: {h.detail}" for h in run.hosts.values()]
            raise AssertionError(
                "rehearsal did not come up:\n" + "\n".join([*lines, *details])
            ) from exc
        yield run
    finally:
        run.stop()
        assert_nothing_left(stack)


def ship(run: Rehearsal, index: int = 0):
    return run.hosts[run.name("ship", index)]


def test_mux_and_ships_boot_from_the_rendered_user_data(rehearsal: Rehearsal) -> None:
    states = rehearsal.ship_states()
    for index in range(SHIPS):
        status = ship(rehearsal, index)
        assert status.phase == AVAILABLE, status.detail
        assert states[status.instance_id] in (AVAILABLE, "running")
        # cloud-init ran the seed it was given, and that seed is the rendered text unchanged.
        seed = host(status.name, "cat", "/var/lib/cloud/seed/nocloud/user-data").stdout
        assert seed == rehearsal.rendered.ship_user_data
        assert host(status.name, "systemctl", "is-active", "campfleet-agent").stdout.strip() == (
            "active"
        )
    mux = rehearsal.hosts[rehearsal.mux]
    assert host(mux.name, "cat", "/var/lib/cloud/seed/nocloud/user-data").stdout == (
        rehearsal.rendered.mux_user_data
    )
    # The state volume is a real ext4 file system on the loop device the local AWS attached.
    mounts = host(mux.name, "findmnt", "-no", "SOURCE,FSTYPE", "/var/lib/campfleet").stdout
    assert "ext4" in mounts, mounts


def test_imds_guard_and_no_secret_on_disk_or_in_user_data(rehearsal: Rehearsal) -> None:
    name = ship(rehearsal).name
    token = [
        "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
        "-H", "X-aws-ec2-metadata-token-ttl-seconds: 60", "http://169.254.169.254/latest/api/token",
    ]  # fmt: skip
    root = host(name, *token)
    assert root.stdout == "200", root.stderr
    # uid 1000: the attendee containers' user (they share the host's network).
    attendee = host(name, *token, user="1000:100")
    assert attendee.returncode == 7 and "Couldn't connect" in attendee.stderr, attendee
    # The ship holds no fleet-wide secret (it attests with its identity document, issue 15).
    assert host(name, "test", "-e", "/etc/campfleet/fleet-secret").returncode == 1
    for host_name, paths in (
        (name, ["/etc/campfleet/agent.json", "/var/lib/cloud/seed/nocloud/user-data"]),
        (rehearsal.mux, ["/etc/campfleet/mux.json", "/var/lib/cloud/seed/nocloud/user-data"]),
    ):
        for path in paths:
            text = host(host_name, "cat", path).stdout
            assert text, path
            for value in rehearsal.secrets.values():
                assert value not in text, f"a secret value is in {host_name}:{path}"


def test_terminating_a_ship_completes_its_lifecycle_action(rehearsal: Rehearsal) -> None:
    victim = ship(rehearsal, SHIPS - 1)
    rehearsal.aws.terminate(victim.instance_id)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if rehearsal.aws.lifecycle_completed(victim.instance_id):
            break
        time.sleep(1)
    assert rehearsal.aws.lifecycle_completed(victim.instance_id), host(
        victim.name, "journalctl", "-u", "campfleet-agent", "-n", "20", "--no-pager"
    ).stdout
    assert rehearsal.ship_states().get(victim.instance_id) == "terminated"
