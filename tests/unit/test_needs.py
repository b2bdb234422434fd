"""campfleet.needs: what a stack needs, counted from resource inputs (hand-made graphs here;
the real dev/prod programs are covered through `campfleet plan` in test_cli_plan.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from campfleet import needs
from campfleet.evaluate import Resource

DATA = Path(__file__).resolve().parents[2] / "campfleet" / "data" / "aws.json"


def res(type_: str, name: str, outputs: dict | None = None, **inputs: object) -> Resource:
    return Resource(
        type=type_,
        name=name,
        urn=f"urn:pulumi:t::campfleet::{type_}::{name}",
        inputs=dict(inputs),
        parent=None,
        protect=False,
        outputs=outputs or {},
    )


def fleet(ships: int = 4, ship_type: str = "t3.large", root: int = 30) -> list[Resource]:
    lt = res(
        needs.LAUNCH_TEMPLATE,
        "ships-lt",
        outputs={"id": "lt-1"},
        instanceType=ship_type,
        blockDeviceMappings=[{"deviceName": "/dev/xvda", "ebs": {"volumeSize": root}}],
    )
    return [
        res(needs.VPC, "vpc"),
        res(needs.INTERNET_GATEWAY, "igw"),
        res(needs.SECURITY_GROUP, "mux-sg"),
        res(needs.SECURITY_GROUP, "ship-sg"),
        lt,
        res(
            needs.AUTOSCALING_GROUP,
            "ships",
            desiredCapacity=ships,
            maxSize=ships + 1,
            launchTemplate={"id": "lt-1"},
        ),
        res(
            needs.INSTANCE,
            "mux",
            instanceType="m5.xlarge",
            rootBlockDevice={"volumeSize": 40, "volumeType": "gp3"},
        ),
        res(needs.EIP, "mux-eip"),
        res(needs.EIP, "nat-eip"),
        res(needs.NAT_GATEWAY, "nat"),
        *[res(needs.VOLUME, f"home-{i}", size=10, type="gp3") for i in range(ships)],
        res(needs.VPC_ENDPOINT, "ecr-api", vpcEndpointType="Interface", subnetIds=["a", "b"]),
        res(needs.VPC_ENDPOINT, "s3", vpcEndpointType="Gateway"),
    ]


def test_counts_instances_volumes_and_network_from_the_declared_resources() -> None:
    got = needs.needs_from_resources(4, fleet())
    assert got.instances == {"t3.large": 4, "m5.xlarge": 1}
    # 4 ship roots x 30 + mux root 40 + 4 homes x 10, all gp3
    assert got.ebs_gib == {"gp3": 4 * 30 + 40 + 4 * 10}
    assert got.elastic_ips == 2
    # one ENI per ship and mux, one per NAT gateway, one per interface-endpoint subnet
    assert got.network_interfaces == 4 + 1 + 1 + 2
    assert got.security_groups == 2 + 1  # the VPC's default group counts too
    assert got.nat_gateways == 1
    assert got.interface_endpoint_azs == 2
    assert got.vcpus == 4 * 2 + 4
    assert got.memory_gib == 4 * 8 + 16
    # an instance refresh may run one ship above desired (ASG max size)
    assert got.surge_instances == {"t3.large": 1}
    assert got.surge_ebs_gib == {"gp3": 30}
    assert got.notes == ()


def test_by_quota_is_the_peak_including_the_refresh_surge() -> None:
    got = needs.needs_from_resources(4, fleet()).by_quota()
    assert got == {
        "vcpu-standard": (4 + 1) * 2 + 4,
        "ebs-gp3": 200 + 30,
        "eip": 2,
        "eni": 8 + 1,
        "security-groups": 3,
        "vpcs": 1,
        "internet-gateways": 1,
    }


def test_gpu_ships_draw_from_the_g_quota_and_missing_root_size_is_noted() -> None:
    resources = fleet(ships=2, ship_type="g4dn.xlarge")
    (lt,) = [r for r in resources if r.type == needs.LAUNCH_TEMPLATE]
    lt.inputs["blockDeviceMappings"] = []
    got = needs.needs_from_resources(2, resources)
    assert got.by_quota()["vcpu-g"] == (2 + 1) * 4
    assert got.by_quota()["vcpu-standard"] == 4  # the m5 mux
    assert got.ebs_gib["gp3"] == 2 * 8 + 40 + 2 * 10
    assert got.surge_ebs_gib == {"gp3": 8}
    assert got.notes == (
        "launch template ships-lt: root volume size not set, assumed 8 GiB (the AMI's)",
    )


def test_unknown_instance_type_is_one_clear_error() -> None:
    got = needs.needs_from_resources(4, fleet(ship_type="z9q.large"))
    with pytest.raises(needs.DataError, match=r"'z9q.large' is not in campfleet/data/aws.json"):
        _ = got.vcpus


def test_vcpu_quota_class_by_family() -> None:
    assert needs.vcpu_quota_key("t3.large") == "vcpu-standard"
    assert needs.vcpu_quota_key("m7i-flex.2xlarge") == "vcpu-standard"
    assert needs.vcpu_quota_key("g5.xlarge") == "vcpu-g"
    assert needs.vcpu_quota_key("vt1.3xlarge") == "vcpu-g"
    assert needs.vcpu_quota_key("im4gn.large") == "vcpu-standard"
    for other in ("p4d.24xlarge", "inf2.xlarge", "trn1.2xlarge", "dl1.24xlarge"):
        with pytest.raises(needs.DataError, match="no vCPU quota class for family"):
            needs.vcpu_quota_key(other)


def test_data_file_is_complete_and_dated() -> None:
    data = json.loads(DATA.read_text())
    prices = data["prices"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", prices["readOn"])
    assert all(url.startswith("https://aws.amazon.com/") for url in prices["sources"].values())
    specs = data["instanceTypes"]["specs"]
    for region, table in prices["regions"].items():
        assert set(table["ec2UsdPerHour"]) == set(specs), region
    quotas = data["quotas"]
    assert all(url.startswith("https://docs.aws.amazon.com/") for url in quotas["sources"])
    for key, item in quotas["items"].items():
        assert re.fullmatch(r"L-[0-9A-F]{8}", item["quotaCode"]), key
        assert item["serviceCode"] in {"ec2", "ebs", "vpc"}, key
        assert isinstance(item["default"], int) and item["unit"], key
    # storage quotas are in TiB: the unit and the GiB factor must agree
    assert quotas["items"]["ebs-gp3"]["unit"] == "TiB"
    assert quotas["items"]["ebs-gp3"]["unitGiB"] == 1024
    assert quotas["items"]["ebs-gp3"]["quotaCode"] == "L-7A658B76"
    assert quotas["items"]["vcpu-standard"]["quotaCode"] == "L-1216C47A"
