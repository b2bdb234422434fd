"""User data: valid cloud-config (Debian's `cloud-init schema`), small, and safe to render."""

from __future__ import annotations

import base64
import gzip
import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from campfleet.evaluate import Evaluation, evaluate
from components import userdata

ROOT = Path(__file__).resolve().parents[2]
MUX_KEYS = {
    "stack",
    "event",
    "region",
    "ships",
    "readyPercent",
    "adminUsers",
    "controlPort",
    "shipGroupName",
    "shipImage",
    "volumeTagKey",
    "parameters",
}
STATE_VOLUME = "vol-0123456789abcdef0"
SHIP_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/campfleet-t-ship@sha256:" + "a" * 64


@pytest.fixture(scope="module")
def prod() -> Evaluation:
    return evaluate(ROOT, "prod")


def unpack(packed: str) -> str:
    return gzip.decompress(base64.b64decode(packed)).decode()


@pytest.fixture(scope="module")
def rendered(prod: Evaluation) -> dict[str, str]:
    return {
        "ship": unpack(prod.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["userData"]),
        "mux": unpack(prod.one("aws:ec2/instance:Instance").inputs["userDataBase64"]),
    }


def files(text: str) -> dict[str, dict]:
    document = yaml.safe_load(text)
    return {entry["path"]: entry for entry in document["write_files"]}


def cloud_init_schema(path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("cloud-init") is None:
        pytest.skip("cloud-init not installed (scripts/system-deps.sh installs it)")
    return subprocess.run(
        ["cloud-init", "schema", "--config-file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("role", ["ship", "mux"])
def test_user_data_is_valid_cloud_config(
    role: str, rendered: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / f"{role}.yaml"
    path.write_text(rendered[role])
    result = cloud_init_schema(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout
    assert rendered[role].startswith("#cloud-config\n")


def test_schema_check_catches_a_bad_cloud_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("#cloud-config\npackages: docker\nwrite_files:\n  - content: x\n")
    result = cloud_init_schema(path)
    assert result.returncode != 0


def test_compressed_size_under_the_ec2_limit(prod: Evaluation) -> None:
    for packed in (
        prod.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["userData"],
        prod.one("aws:ec2/instance:Instance").inputs["userDataBase64"],
    ):
        assert len(base64.b64decode(packed)) < 16 * 1024


def test_mux_settings_file(prod: Evaluation, rendered: dict[str, str]) -> None:
    entry = files(rendered["mux"])["/etc/campfleet/mux.json"]
    settings = json.loads(entry["content"])
    assert set(settings) >= MUX_KEYS
    assert settings["stack"] == "prod" and settings["ships"] == 150
    assert settings["adminUsers"] == ["organizer"]
    assert settings["controlPort"] == 8700
    assert settings["shipGroupName"] == "campfleet-prod-ships"
    assert settings["shipImage"] == prod.outputs["shipImage"]
    assert settings["volumeTagKey"] == "campfleet:stack"
    names = {p.inputs["name"] for p in prod.of_type("aws:ssm/parameter:Parameter")}
    assert set(settings["parameters"].values()) == names
    assert {"fleetSecret", "proxyToken", "cookieSecret", "sharedPassword"} <= set(
        settings["parameters"]
    )
    assert prod.outputs["muxImage"] in rendered["mux"]


def test_ship_files(prod: Evaluation, rendered: dict[str, str]) -> None:
    written = files(rendered["ship"])
    agent = json.loads(written["/etc/campfleet/agent.json"]["content"])
    assert agent["muxUrl"] == prod.outputs["controlEndpoint"]
    assert agent["runtime"] == "docker" and agent["region"] == "eu-west-1"
    assert agent["heartbeat"] > 0
    assert agent["shipGroupName"] == prod.outputs["shipGroupName"]
    assert agent["lifecycleHookName"] == "campfleet-prod-ships-terminating"
    # Container limits (issue 15): prod's ships are the default t3.large (8 GiB, 1 GiB kept).
    assert (agent["containerMemoryMiB"], agent["containerPidsLimit"]) == (7168, 2048)
    unit = written["/etc/systemd/system/campfleet-agent.service"]["content"]
    assert unit == userdata.AGENT_UNIT.read_text()
    script = written["/usr/local/sbin/campfleet-ship-init"]
    assert script["permissions"] == "0700"
    assert "umask 077" in script["content"]
    assert "--name /campfleet/prod/fleet-secret" in script["content"]
    assert "chmod 0600 /etc/campfleet/fleet-secret" in script["content"]
    assert prod.outputs["shipImage"] in script["content"]
    registry = prod.outputs["shipImage"].split("/")[0]
    docker_config = json.loads(written["/root/.docker/config.json"]["content"])
    assert docker_config == {"credHelpers": {registry: "ecr-login"}}


GUARD = "/etc/systemd/system/campfleet-imds-guard.service"
GUARD_RULE = "OUTPUT -d 169.254.169.254/32 -m owner ! --uid-owner 0 -j REJECT"


def test_agent_lands_where_its_unit_imports_it(rendered: dict[str, str]) -> None:
    """Ship image -> /opt/campfleet on the host -> PYTHONPATH of the agent's unit: one path."""
    written = files(rendered["ship"])
    unit = written["/etc/systemd/system/campfleet-agent.service"]["content"].splitlines()
    assert "Environment=PYTHONPATH=/opt/campfleet" in unit
    command = "-m campfleet.agent --config /etc/campfleet/agent.json"
    assert any(line.startswith("ExecStart=") and line.endswith(command) for line in unit)
    init = written["/usr/local/sbin/campfleet-ship-init"]["content"]
    assert 'docker cp "$source":/opt/campfleet/. /opt/campfleet/' in init
    dockerfile = (ROOT / "images/ship/Dockerfile").read_text().splitlines()
    copies = {line.split()[-1] for line in dockerfile if line.startswith("COPY campfleet/")}
    assert copies == {
        "/opt/campfleet/campfleet/",
        "/opt/campfleet/campfleet/agent/",
        "/opt/campfleet/campfleet/contracts/",
    }


@pytest.mark.parametrize(("cached", "pulled"), [(True, False), (False, True)])
def test_mux_pull_uses_a_local_copy_of_the_digest(
    cached: bool, pulled: bool, rendered: dict[str, str], tmp_path: Path
) -> None:
    """A mux restart during an ECR outage still starts: the digest it needs is already local."""
    script = tmp_path / "campfleet-pull"
    script.write_text(files(rendered["mux"])["/usr/local/sbin/campfleet-pull"]["content"])
    log = tmp_path / "docker.log"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    inspect_status = 0 if cached else 1
    fake.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\n[ "$1" = image ] && exit {inspect_status}\nexit 0\n'
    )
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin"}
    result = subprocess.run(
        ["bash", str(script), SHIP_IMAGE], env=env, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == f"image inspect {SHIP_IMAGE}"
    assert (f"pull {SHIP_IMAGE}" in calls) is pulled


def test_only_root_reaches_the_metadata_service_on_ships(rendered: dict[str, str]) -> None:
    """Attendee containers use host networking, where the hop limit of 1 does not stop them."""
    written = files(rendered["ship"])
    unit = written[GUARD]["content"]
    lines = unit.splitlines()
    assert f"ExecStart=iptables -w -I {GUARD_RULE}" in lines
    assert f"ExecStart=-iptables -w -D {GUARD_RULE}" in lines  # restarts never stack copies
    assert "Before=docker.service campfleet-agent.service" in lines
    assert "RequiredBy=docker.service campfleet-agent.service" in lines
    init = written["/usr/local/sbin/campfleet-ship-init"]["content"].splitlines()
    order = [
        init.index("systemctl daemon-reload"),
        init.index("systemctl enable --now campfleet-imds-guard"),
        init.index("systemctl enable --now docker"),
        init.index("systemctl enable --now campfleet-agent"),
    ]
    assert order == sorted(order)
    assert "campfleet-imds-guard" not in rendered["mux"]  # the mux runs no attendee code


def test_guard_unit_passes_systemd_analyze(rendered: dict[str, str], tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = tmp_path / "campfleet-imds-guard.service"
    unit.write_text(files(rendered["ship"])[GUARD]["content"])
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize(
    ("role", "path"),
    [
        ("ship", "/usr/local/sbin/campfleet-ship-init"),
        ("mux", "/usr/local/sbin/campfleet-pull"),
        ("mux", "/usr/local/sbin/campfleet-mux-state"),
    ],
)
def test_scripts_pass_shellcheck(
    role: str, path: str, rendered: dict[str, str], tmp_path: Path
) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (scripts/system-deps.sh installs it)")
    script = tmp_path / "script.sh"
    script.write_text(files(rendered[role])[path]["content"])
    result = subprocess.run(
        ["shellcheck", str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("image", "region", "parameter"),
    [
        (SHIP_IMAGE + "; reboot", "eu-west-1", "/campfleet/t/fleet-secret"),
        (SHIP_IMAGE, "eu-west-1 $(id)", "/campfleet/t/fleet-secret"),
        (SHIP_IMAGE, "eu-west-1", "/campfleet/t/fleet secret"),
    ],
)
def test_render_refuses_values_that_could_change_a_script(
    image: str, region: str, parameter: str
) -> None:
    with pytest.raises(ValueError, match="is not a plain token; refusing to render"):
        userdata.ship_user_data({"muxUrl": "http://10.0.0.10:8700"}, image, region, parameter)


def test_documents_cannot_break_the_yaml() -> None:
    hostile = {"stack": 'x"\n  - path: /etc/shadow\n', "ships": 1}
    text = userdata.mux_user_data(hostile, SHIP_IMAGE, STATE_VOLUME)
    written = files(text)
    assert set(written) == {
        "/etc/campfleet/mux.json",
        "/root/.docker/config.json",
        "/usr/local/sbin/campfleet-pull",
        "/usr/local/sbin/campfleet-mux-state",
        "/etc/systemd/system/campfleet-mux-state.service",
        "/etc/systemd/system/var-lib-campfleet.mount",
        "/etc/systemd/system/campfleet-proxy.service",
        "/etc/systemd/system/campfleet-tls.service",
        "/etc/systemd/system/campfleet-tls-renew.service",
        "/etc/systemd/system/campfleet-tls-renew.timer",
        "/etc/systemd/system/campfleet-mux.service",
    }
    assert json.loads(written["/etc/campfleet/mux.json"]["content"]) == hostile


def test_pack_is_deterministic_and_enforces_the_limit() -> None:
    text = userdata.mux_user_data({"ships": 1}, SHIP_IMAGE, STATE_VOLUME)
    assert userdata.pack(text) == userdata.pack(text)
    assert unpack(userdata.pack(text)) == text
    incompressible = base64.b64encode(random.Random(0).randbytes(20_000)).decode()
    with pytest.raises(ValueError, match=r"bytes compressed; EC2 allows 16384"):
        userdata.pack(incompressible)


def test_every_placeholder_needs_a_value() -> None:
    with pytest.raises(ValueError, match=r"placeholders .* but values"):
        userdata.render("mux.yaml", {"mux_json": "{}"})


# --- issue 13: the hub never starts on an empty state directory ----------------------------

MUX_UNITS = (
    "/etc/systemd/system/campfleet-mux-state.service",
    "/etc/systemd/system/var-lib-campfleet.mount",
    "/etc/systemd/system/campfleet-mux.service",
)


def test_mux_starts_only_on_its_mounted_state_volume(rendered: dict[str, str]) -> None:
    written = files(rendered["mux"])
    hub = written["/etc/systemd/system/campfleet-mux.service"]["content"].splitlines()
    assert "RequiresMountsFor=/var/lib/campfleet" in hub
    assert "AssertPathIsMountPoint=/var/lib/campfleet" in hub
    mount = written["/etc/systemd/system/var-lib-campfleet.mount"]["content"]
    assert "What=/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol" in mount
    assert "Where=/var/lib/campfleet" in mount and "nofail" not in mount
    assert "Requires=campfleet-mux-state.service" in mount
    runcmd = yaml.safe_load(rendered["mux"])["runcmd"]
    hub_started = next(i for i, cmd in enumerate(runcmd) if "campfleet-mux" in cmd)
    assert runcmd.index(["systemctl", "enable", "--now", "var-lib-campfleet.mount"]) < hub_started
    assert "fstab" not in rendered["mux"]  # no `nofail` line that lets the hub start anyway


def test_mux_units_pass_systemd_analyze(rendered: dict[str, str], tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    written = files(rendered["mux"])
    paths = []
    for unit in MUX_UNITS:
        path = tmp_path / Path(unit).name
        # The units name host paths; verify checks them, so point them at this machine's.
        text = written[unit]["content"].replace("/usr/local/sbin/campfleet-mux-state", "/bin/true")
        path.write_text(text)
        paths.append(str(path))
    result = subprocess.run(
        ["systemd-analyze", "verify", *paths[:2]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def run_state_script(
    rendered: dict[str, str], tmp_path: Path, device_exists: bool, blkid_status: int
) -> tuple[subprocess.CompletedProcess, list[str]]:
    script = tmp_path / "campfleet-mux-state"
    script.write_text(files(rendered["mux"])["/usr/local/sbin/campfleet-mux-state"]["content"])
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool, status in (("blkid", blkid_status), ("mkfs.ext4", 0)):
        fake = bin_dir / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexit {status}\n')
        fake.chmod(0o755)
    device = tmp_path / "nvme-state"
    if device_exists:
        device.write_text("")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CAMPFLEET_STATE_DEVICE": str(device),
        "CAMPFLEET_STATE_TRIES": "2",
        "CAMPFLEET_STATE_PAUSE": "0",
    }
    result = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


@pytest.mark.parametrize(
    ("device_exists", "blkid_status", "code", "formatted"),
    [
        (False, 2, 1, False),  # never attached: fail (the hub stays stopped), format nothing
        (True, 4, 1, False),  # blkid could not read it: not a blank disk
        (True, 0, 0, False),  # the previous mux's state
        (True, 2, 0, True),  # blank: a new stack's first boot
    ],
)
def test_state_script_formats_only_a_blank_volume(
    rendered: dict[str, str],
    tmp_path: Path,
    device_exists: bool,
    blkid_status: int,
    code: int,
    formatted: bool,
) -> None:
    result, calls = run_state_script(rendered, tmp_path, device_exists, blkid_status)
    assert result.returncode == code, result.stderr
    assert any(c.startswith("mkfs.ext4") for c in calls) is formatted
    if code:
        assert result.stderr.startswith("campfleet-mux-state: ")


def test_proxy_and_hub_are_separate_units_restarted_on_their_own(
    rendered: dict[str, str],
) -> None:
    """The proxy outlives the hub: its own unit, and neither unit stops or restarts the other."""
    written = files(rendered["mux"])
    proxy = written["/etc/systemd/system/campfleet-proxy.service"]["content"]
    hub = written["/etc/systemd/system/campfleet-mux.service"]["content"]
    assert "python -m campfleet.mux.proxy" in proxy and "Restart=always" in proxy
    assert "jupyterhub" not in proxy and "campfleet.mux.proxy" not in hub
    assert "Restart=always" in hub and "Wants=network-online.target campfleet-proxy.service" in hub
    for unit in (proxy, hub):
        # Requires=/BindsTo=/PartOf= between them would carry a restart across.
        assert not re.search(r"^(Requires|BindsTo|PartOf)=.*campfleet-(proxy|mux)", unit, re.M)
    assert (
        "[systemctl, enable, --now, campfleet-proxy, campfleet-mux, campfleet-tls]"
        in (rendered["mux"])
    )


def test_tls_terminator_and_renewal_timer(rendered: dict[str, str]) -> None:
    """nginx + certbot as their own unit, seeing only their state; a timer renews."""
    written = files(rendered["mux"])
    unit = written["/etc/systemd/system/campfleet-tls.service"]["content"]
    assert "python -m campfleet.mux.tls serve" in unit and "Restart=always" in unit
    assert "-v /var/lib/campfleet/tls:/var/lib/campfleet/tls" in unit
    assert "-v /var/lib/campfleet:/var/lib/campfleet" not in unit  # not the hub's database
    renew = written["/etc/systemd/system/campfleet-tls-renew.service"]["content"]
    assert "docker exec campfleet-tls python -m campfleet.mux.tls renew" in renew
    timer = written["/etc/systemd/system/campfleet-tls-renew.timer"]["content"]
    assert "OnUnitActiveSec=6h" in timer and "Persistent=true" in timer
    assert "[systemctl, enable, --now, campfleet-tls-renew.timer]" in rendered["mux"]
    settings = json.loads(written["/etc/campfleet/mux.json"]["content"])
    assert (settings["publicIp"], settings["publicPort"], settings["behindTls"]) == (
        "127.0.0.1",
        8000,
        True,
    )
    assert settings["tls"]["acmeDirectory"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert settings["tls"]["domainName"] == ""  # prod: a certificate for the Elastic IP
