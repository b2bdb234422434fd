"""One source for each shared fact: every writer and reader of a contract gets it from
campfleet/contracts (or campfleet.tags / campfleet.protocol), so none can drift alone."""

from __future__ import annotations

import dataclasses
import gzip
import json
from base64 import b64decode
from pathlib import Path

import pytest
import yaml

from campfleet.agent.config import AgentConfig
from campfleet.agent.config import load as load_agent_config
from campfleet.contracts import paths, ports
from campfleet.contracts import secrets as contract
from campfleet.contracts.agentjson import FILE_KEYS, agent_json
from campfleet.contracts.muxjson import local_block, mux_json
from campfleet.evaluate import Evaluation, evaluate
from campfleet.local import LocalEvent
from campfleet.mux import settings as mux_settings_reader
from campfleet.tags import STACK_TAG
from components.mux import MuxArgs, mux_settings

ROOT = Path(__file__).resolve().parents[2]
SHIP_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/campfleet-t-ship@sha256:" + "a" * 64
# By design only one side has these: the mux's listen addresses and TLS front door on AWS;
# the loopback block and project list of a local event.
AWS_ONLY = {"publicIp", "publicPort", "hubPort", "tls"}
LOCAL_ONLY = {"local", "projects"}
SHARED_VALUES = (
    "ships",
    "readyPercent",
    "adminUsers",
    "volumeTagKey",
    "heartbeat",
    "lostAfter",
    "auth",
    "adminTokenHours",
    "fleet",
)


@pytest.fixture(scope="module")
def prod() -> Evaluation:
    return evaluate(ROOT, "prod")


def written(user_data: str) -> dict[str, str]:
    document = yaml.safe_load(gzip.decompress(b64decode(user_data)).decode())
    return {entry["path"]: entry["content"] for entry in document["write_files"]}


@pytest.fixture(scope="module")
def mux_files(prod: Evaluation) -> dict[str, str]:
    return written(prod.one("aws:ec2/instance:Instance").inputs["userDataBase64"])


@pytest.fixture(scope="module")
def ship_files(prod: Evaluation) -> dict[str, str]:
    return written(prod.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["userData"])


def aws_mux_json(**changes: object) -> dict:
    args = MuxArgs(
        stack="t",
        event="t",
        ships=3,
        ready_percent=80,
        admin_users=("organizer",),
        instance_type="t3.large",
        root_volume_gib=20,
        zone="eu-west-1a",
        protect_state=False,
        subnet_id="subnet-1",
        security_group_id="sg-1",
        private_ip="10.0.0.10",
        image="mux",
        image_repository_arn="arn",
        ship_image=SHIP_IMAGE,
        ship_group_name="campfleet-t-ships",
        ship_group_arn="arn",
        parameter_names={s.key: contract.parameter_name("t", s) for s in contract.GENERATED},
        parameter_arns={},
        region="eu-west-1",
        account_id="123456789012",
        tags={},
        fleet={"mode": "fixed"},
        **changes,  # type: ignore[arg-type]
    )
    return mux_settings(args, "eu-west-1", SHIP_IMAGE)


def local_mux_json(tmp_path: Path) -> dict:
    event = LocalEvent(
        ships=3, port=18000, admin="organizer", ready_percent=80, heartbeat=5, lost_after=3,
        state_dir=tmp_path, fleet={"mode": "fixed"},
    )  # fmt: skip
    tmp_path.mkdir(parents=True, exist_ok=True)
    event._write_settings()
    return json.loads(event.settings_path.read_text())


def test_aws_and_local_mux_json_differ_only_where_they_must(tmp_path: Path) -> None:
    """The component and `campfleet local` both call the one builder: same keys, same values
    for the same inputs, apart from what only one of them has."""
    aws, local = aws_mux_json(), local_mux_json(tmp_path)
    assert set(aws) - AWS_ONLY == set(local) - LOCAL_ONLY
    assert set(aws) >= AWS_ONLY and set(local) >= LOCAL_ONLY
    assert {k: aws[k] for k in SHARED_VALUES} == {k: local[k] for k in SHARED_VALUES}
    # The codes parameter only with auth codes on AWS; a local event always names its file.
    assert set(aws["parameters"]) == set(local["parameters"]) - {contract.ATTENDEE_CODES.key}
    codes = aws_mux_json(auth="codes")["parameters"][contract.ATTENDEE_CODES.key]
    assert codes == contract.codes_parameter("t")
    # Both are settings the mux accepts.
    assert mux_settings_reader.parse(aws, private_ip="10.0.0.10").ships == 3
    assert mux_settings_reader.load(tmp_path / paths.MUX_SETTINGS_FILE).is_local


def test_the_mux_reads_what_the_builder_writes(tmp_path: Path) -> None:
    document = mux_json(
        stack="s", event="e", region="r", ships=7, ready_percent=60, admin_users=["a"],
        control_port=9000, ship_image="img", parameters={"fleetSecret": "f", "proxyToken": "p",
        "cookieSecret": "c", "sharedPassword": "s"}, heartbeat=2.5, lost_after=4,
        ship_group_name="g", auth="codes", admin_token_hours=12, fleet={"mode": "demand"},
        projects={"gpu": {"image": "gpu:1"}}, behind_tls=True, public_port=8000, hub_port=8081,
        local=local_block(state_dir=str(tmp_path), volumes_root=str(tmp_path / "v"), volumes=2,
                          public_port=1, hub_port=2, proxy_api_port=3, singleuser_cmd=["x"]),
    )  # fmt: skip
    s = mux_settings_reader.parse(document)
    assert (s.stack, s.event, s.region, s.ships, s.ready_percent) == ("s", "e", "r", 7, 60)
    assert (s.admin_users, s.control_port, s.ship_image, s.ship_group_name) == (
        ("a",),
        9000,
        "img",
        "g",
    )
    assert (s.heartbeat, s.lost_after, s.auth, s.admin_token_hours) == (2.5, 4, "codes", 12.0)
    assert (s.fleet.mode, s.projects, s.behind_tls) == ("demand", {"gpu": {"image": "gpu:1"}}, True)
    assert s.volume_tag_key == STACK_TAG and s.state_dir == tmp_path
    assert (s.public_port, s.hub_port, s.proxy_api_port) == (1, 2, 3)  # the local block's
    assert s.local is not None and s.local.singleuser_cmd == ("x",)


def test_every_writer_names_the_secrets_from_the_contract(
    prod: Evaluation, mux_files: dict[str, str], ship_files: dict[str, str], tmp_path: Path
) -> None:
    names = {p.inputs["name"] for p in prod.of_type("aws:ssm/parameter:Parameter")}
    assert names == {contract.parameter_name("prod", s) for s in contract.GENERATED}
    rendered = json.loads(mux_files[str(paths.MUX_SETTINGS)])
    assert rendered["parameters"] == {
        s.key: contract.parameter_name("prod", s) for s in contract.GENERATED
    }
    # The ships fetch the fleet secret by the same name, into the file the agent reads.
    init = ship_files["/usr/local/sbin/campfleet-ship-init"]
    assert f"--name {contract.parameter_name('prod', contract.FLEET_SECRET)}" in init
    assert str(paths.FLEET_SECRET) in init
    event = LocalEvent(ships=1, port=18000, state_dir=tmp_path)
    event.secrets_dir.mkdir(parents=True)
    event._write_secrets()
    assert {p.name for p in event.secrets_dir.iterdir()} == {s.name for s in contract.GENERATED}
    assert tuple(s.key for s in contract.MUX_SECRETS) == mux_settings_reader.SECRET_NAMES


def test_user_data_writes_where_the_mux_and_the_agent_read(
    mux_files: dict[str, str], ship_files: dict[str, str], prod: Evaluation
) -> None:
    assert str(paths.MUX_SETTINGS) in mux_files and str(paths.AGENT_SETTINGS) in ship_files
    assert paths.mux_settings_path() == paths.MUX_SETTINGS  # what the mux image's services read
    unit = ship_files["/etc/systemd/system/campfleet-agent.service"]
    assert f"--config {paths.AGENT_SETTINGS}" in unit
    assert f"PYTHONPATH={paths.CODE_DIR}" in unit
    # systemd makes /var/lib/<StateDirectory> for the agent: its default state directory.
    assert paths.AGENT_STATE_DIR.parent == Path("/var/lib")
    assert f"StateDirectory={paths.AGENT_STATE_DIR.name}" in unit
    mux_user_data = gzip.decompress(
        b64decode(prod.one("aws:ec2/instance:Instance").inputs["userDataBase64"])
    ).decode()
    assert f"Where={paths.MUX_STATE_DIR}" in mux_user_data
    tls_dir = paths.MUX_STATE_DIR / paths.TLS_DIR
    assert f"-v {tls_dir}:{tls_dir}" in mux_user_data  # the TLS service sees only this part


def test_agent_json_is_built_and_read_with_the_same_keys(
    ship_files: dict[str, str], tmp_path: Path
) -> None:
    rendered = json.loads(ship_files[str(paths.AGENT_SETTINGS)])
    assert set(rendered) <= set(FILE_KEYS)
    attributes = {f.name for f in dataclasses.fields(AgentConfig)} | {"secret_file"}
    assert {attribute for attribute, _ in FILE_KEYS.values()} <= attributes
    with pytest.raises(ValueError, match=r"agent\.json has no setting mux_ulr"):
        agent_json(mux_ulr="http://10.0.0.10:8700")
    secret = tmp_path / "fleet-secret"
    secret.write_text("s" * 48)
    document = agent_json(
        mux_url="http://10.0.0.10:8700",
        heartbeat=7,
        secret_file=str(secret),
        ship_group_name="g",
        lifecycle_hook_name="h",
    )
    config_file = tmp_path / paths.AGENT_SETTINGS_FILE
    config_file.write_text(json.dumps(document))
    config, _ = load_agent_config(["--config", str(config_file)])
    assert (config.mux_url, config.heartbeat, config.fleet_secret) == (
        "http://10.0.0.10:8700",
        7,
        b"s" * 48,
    )
    assert (config.ship_group_name, config.lifecycle_hook_name) == ("g", "h")


def test_a_ship_has_a_port_for_every_project_the_mux_allows() -> None:
    """The agent gives the default server SHIP_PORT_BASE and each project the next port up;
    the ship group opens SHIP_PORTS to the mux, so all of them must fit."""
    low, high = ports.SHIP_PORTS
    assert low == ports.SHIP_PORT_BASE == AgentConfig.__dataclass_fields__["port_base"].default
    assert high >= ports.SHIP_PORT_BASE + mux_settings_reader.MAX_PROJECTS
