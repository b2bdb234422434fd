"""The issue-10 rehearsal, end to end: the stack's rendered user data boots a mux and ships
(systemd hosts, cloud-init, nested Docker) against the local AWS, and what the user data
promises holds there. One rehearsal is shared by the module (it takes minutes to boot)."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Optional, TypeVar

import pytest
from cryptography import x509

from campfleet.contracts.paths import MUX_STATE_DIR, REGISTRY_FILE, VOLUMES_ROOT
from campfleet.rehearsal.aws import LocalAws
from campfleet.rehearsal.rehearsal import AVAILABLE, Rehearsal
from tests.integration.conftest import Attendee, wait_until
from tests.integration.rehearsal_kit import assert_nothing_left, project

pytestmark = [pytest.mark.docker, pytest.mark.slow]
T = TypeVar("T")
SHIPS = 3  # the mux and 3 ships; the last one is terminated by its test


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
        state = states[status.instance_id]
        if index == SHIPS - 1 and rehearsal.aws.lifecycle_completed(status.instance_id):
            assert state == "terminated"  # its test ran first (test order is shuffled)
        else:
            assert state in (AVAILABLE, "running"), state
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


class FrontDoor:
    """What an Attendee needs of an event, for the rehearsed mux: its URL on 127.0.0.1 (the
    published port), the room password, Pebble's root, and the name its certificate carries
    (the public IPv4 IMDS gave the mux), checked although the URL names 127.0.0.1."""

    tls = True

    def __init__(self, run: Rehearsal) -> None:
        assert run.acme is not None
        self.run = run
        self.ca_file = run.acme.root_file
        self.tls_name = run.public_ip
        self.password = next(v for k, v in run.secrets.items() if k.endswith("/shared-password"))

    @property
    def url(self) -> str:
        return self.run.url


def served_certificate(run: Rehearsal) -> x509.Certificate:
    """The mux's certificate through the published port, verified against Pebble's root for
    the mux's public IPv4."""
    assert run.acme is not None
    context = ssl.create_default_context(cafile=str(run.acme.root_file))
    raw = socket.create_connection(("127.0.0.1", run.published_port()), timeout=10)
    with context.wrap_socket(raw, server_hostname=run.public_ip) as conn:
        return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))


def claims(run: Rehearsal, name: str) -> tuple[str, str]:
    """(ship id, volume id) the mux's registry gives `name`."""
    query = (
        "import json,sqlite3;"
        f"c=sqlite3.connect('file:{MUX_STATE_DIR / REGISTRY_FILE}?mode=ro',uri=True);"
        f"s=c.execute('select ship_id from ships where owner=?',({name!r},)).fetchall();"
        f"v=c.execute('select volume_id from volumes where owner=?',({name!r},)).fetchall();"
        "print(json.dumps([s,v]))"
    )
    done = host(run.mux, "docker", "exec", "campfleet-mux", "python3", "-c", query)
    ships, volumes = json.loads(done.stdout or "[[], []]")
    assert len(ships) == 1 and len(volumes) == 1, (done.stdout, done.stderr)
    return ships[0][0], volumes[0][0]


def test_attendee_runs_code_on_a_ship_volume_and_a_new_mux_host_keeps_the_claim(
    rehearsal: Rehearsal,
) -> None:
    """Through the published port over HTTPS (the mux's certificate, ordered from the
    rehearsal's ACME CA for the public IPv4 IMDS gives it), an attendee runs code on a ship;
    the file is on the ext4 home volume the local AWS attached. Then the mux host is replaced
    as AWS would (terminated, state volume detached, a new instance from the same user data):
    the claim, the file and the login survive. One test: the replacement must follow the
    claim, and pytest-randomly shuffles tests."""
    # The front door: a certificate for the public IPv4, issued by Pebble through the real
    # http-01 challenge on the mux's port 80 (pending until certbot's first order is in).
    cert = wait_until(lambda: _try(served_certificate, rehearsal), 300, "the mux's certificate")
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [rehearsal.public_ip]
    assert "Pebble" in cert.issuer.rfc4514_string()
    with pytest.raises(ssl.SSLCertVerificationError):  # the name is checked: not 127.0.0.1
        context = ssl.create_default_context(cafile=str(rehearsal.acme.root_file))
        raw = socket.create_connection(("127.0.0.1", rehearsal.published_port()), timeout=10)
        context.wrap_socket(raw, server_hostname="127.0.0.1")

    door = FrontDoor(rehearsal)
    ada = Attendee(door, "ada")  # type: ignore[arg-type]
    assert ada.login().status_code == 302
    ada.start_server(timeout=300)
    token = uuid.uuid4().hex
    proof = "rehearsal-proof.txt"
    out = ada.run_code(
        f"import os; open({proof!r}, 'w').write({token!r}); print(os.getuid(), os.getcwd())"
    )
    assert out.split() == ["1000", "/home/jovyan"], out

    ship_id, volume_id = claims(rehearsal, "ada")
    on = next(h for h in rehearsal.hosts.values() if h.instance_id == ship_id)
    mount = str(VOLUMES_ROOT / volume_id)
    source, fstype = host(on.name, "findmnt", "-no", "SOURCE,FSTYPE", mount).stdout.split()
    assert fstype == "ext4", (source, fstype)
    # The mounted device is the loop device the local AWS attached (block major 7), shown as
    # the EBS volume's NVMe device and its by-id link.
    assert host(on.name, "stat", "-Lc", "%t", source).stdout.strip() == "7", source
    by_id = f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"
    assert host(on.name, "readlink", "-f", by_id).stdout.strip() == source
    stat = host(on.name, "stat", "-c", "%u %m", f"{mount}/{proof}").stdout.split()
    assert stat == ["1000", mount], stat
    assert host(on.name, "cat", f"{mount}/{proof}").stdout == token

    # Replace the mux host; the claim, the file and the login survive.
    old_mux = rehearsal.hosts[rehearsal.mux].instance_id
    started = time.monotonic()
    new_mux = rehearsal.replace_mux()
    rehearsal.wait_hub(timeout=900)
    assert new_mux != old_mux
    mux_seed = host(rehearsal.mux, "cat", "/var/lib/cloud/seed/nocloud/user-data").stdout
    assert mux_seed == rehearsal.rendered.mux_user_data
    assert claims(rehearsal, "ada") == (ship_id, volume_id)
    wait_until(lambda: _try(served_certificate, rehearsal), 300, "HTTPS on the new mux host")
    assert served_certificate(rehearsal).serial_number == cert.serial_number  # from the volume
    ada.base = door.url.rstrip("/")  # a new published port: a new host container
    wait_until(lambda: _try(lambda: ada.login().status_code == 302), 120, "login again")
    page = ada.server_get("")
    assert page.status_code == 200 and page.url.endswith("/user/ada/lab"), page.url
    got = ada.server_get(f"api/contents/{proof}")
    assert got.status_code == 200 and got.json()["content"] == token, got.text
    print(f"mux host replaced and serving the claim again in {time.monotonic() - started:.0f} s")


def _try(probe: Callable[..., T], *args: object) -> Optional[T]:
    """probe(*args), or None while it raises (not up yet)."""
    try:
        return probe(*args)
    except (OSError, AssertionError, ValueError):
        return None
