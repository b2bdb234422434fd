"""What a stack needs from an AWS account, read off the evaluated Pulumi program.

`campfleet plan` prices these needs and `campfleet preflight` holds them against the account's
quotas, so both read them here, from the resources the program really declares (launch
template, Auto Scaling group, mux instance, home volumes, Elastic IPs, security groups, NAT
gateways, interface endpoints) instead of re-deriving them from the config.
All AWS figures come from campfleet/data/aws.json.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Mapping, Protocol

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
AUTOSCALING_GROUP = "aws:autoscaling/group:Group"
INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"
EIP = "aws:ec2/eip:Eip"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
VPC = "aws:ec2/vpc:Vpc"
INTERNET_GATEWAY = "aws:ec2/internetGateway:InternetGateway"
NAT_GATEWAY = "aws:ec2/natGateway:NatGateway"
VPC_ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"


class DataError(Exception):
    """A figure the stack needs is missing from campfleet/data/aws.json (one clear line)."""


class ResourceLike(Protocol):
    type: str
    name: str
    inputs: dict
    outputs: dict


@lru_cache(maxsize=1)
def aws_data() -> dict[str, Any]:
    """The price/spec/quota table shipped in the package (read once)."""
    text = resources.files("campfleet").joinpath("data/aws.json").read_text(encoding="utf-8")
    return json.loads(text)


def instance_spec(instance_type: str) -> dict[str, float]:
    """vCPUs and memory of an instance type, or DataError naming what to add."""
    spec = aws_data()["instanceTypes"]["specs"].get(instance_type)
    if spec is None:
        raise DataError(
            f"instance type {instance_type!r} is not in campfleet/data/aws.json (instanceTypes); "
            f"add its vCPUs, memory and prices, or pick one of: {known_types()}"
        )
    return spec


def known_types() -> str:
    return ", ".join(sorted(aws_data()["instanceTypes"]["specs"]))


def vcpu_quota_key(instance_type: str) -> str:
    """The quota item (e.g. 'vcpu-standard') whose vCPU pool an instance type draws from."""
    family = re.match(r"[a-z]+", instance_type)
    letters = family.group(0) if family else ""
    for key, item in aws_data()["quotas"]["items"].items():
        if letters in item.get("families", []):
            return key
    raise DataError(
        f"instance type {instance_type!r}: campfleet/data/aws.json has no vCPU quota class "
        f"for family {letters!r}"
    )


def ebs_quota_key(volume_type: str) -> str | None:
    """The storage quota item for a volume type, or None when the data file tracks none."""
    for key, item in aws_data()["quotas"]["items"].items():
        if item.get("volumeType") == volume_type:
            return key
    return None


@dataclass(frozen=True)
class Needs:
    """Steady-state needs of one stack (counts, GiB, vCPUs)."""

    ships: int
    instances: dict[str, int]  # instance type -> running count (ships + mux)
    ebs_gib: dict[str, int]  # volume type -> GiB, root volumes included
    elastic_ips: int
    network_interfaces: int
    security_groups: int
    nat_gateways: int
    interface_endpoint_azs: int  # sum over interface endpoints of the subnets they sit in
    vpcs: int = 0
    internet_gateways: int = 0
    # Extra ships an instance refresh may launch before it terminates old ones (ASG max size
    # above desired): the account's quotas must hold them too, so preflight counts them.
    surge_instances: dict[str, int] = field(default_factory=dict)
    surge_ebs_gib: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = field(default=())

    @property
    def vcpus(self) -> int:
        return sum(int(instance_spec(t)["vcpus"]) * n for t, n in self.instances.items())

    @property
    def memory_gib(self) -> float:
        return sum(float(instance_spec(t)["memoryGiB"]) * n for t, n in self.instances.items())

    @property
    def total_ebs_gib(self) -> int:
        return sum(self.ebs_gib.values())

    def by_quota(self) -> dict[str, float]:
        """Peak need per quota item of aws.json, in natural units (vCPU, GiB, count).

        The peak includes the instance-refresh surge; plan's steady-state figures do not.
        """
        out: Counter[str] = Counter()
        instances = Counter(self.instances) + Counter(self.surge_instances)
        for itype, count in instances.items():
            out[vcpu_quota_key(itype)] += int(instance_spec(itype)["vcpus"]) * count
        for vtype, gib in (Counter(self.ebs_gib) + Counter(self.surge_ebs_gib)).items():
            key = ebs_quota_key(vtype)
            if key:
                out[key] += gib
        out["eip"] += self.elastic_ips
        out["eni"] += self.network_interfaces + sum(self.surge_instances.values())
        out["security-groups"] += self.security_groups
        out["vpcs"] += self.vpcs
        out["internet-gateways"] += self.internet_gateways
        return dict(out)


def _root_volume(block: Mapping[str, Any] | None, notes: list[str], owner: str) -> tuple[str, int]:
    """(type, GiB) of a root volume; the AMI default size when the program does not set one."""
    block = block or {}
    size = block.get("volumeSize")
    vtype = block.get("volumeType") or "gp3"
    if not size:
        size = aws_data()["rootVolumes"]["defaultGiB"]
        notes.append(f"{owner}: root volume size not set, assumed {size} GiB (the AMI's)")
    return str(vtype), int(size)


def _launch_template_root(lt: ResourceLike, notes: list[str]) -> tuple[str, int]:
    mappings = lt.inputs.get("blockDeviceMappings") or []
    ebs = mappings[0].get("ebs") if mappings else None
    return _root_volume(ebs, notes, f"launch template {lt.name}")


def _template_for(group: ResourceLike, templates: list[ResourceLike]) -> ResourceLike:
    """The launch template an Auto Scaling group launches (by id; the only one otherwise)."""
    ref = group.inputs.get("launchTemplate") or {}
    wanted = ref.get("id") or ref.get("name")
    for lt in templates:
        if wanted and wanted in (lt.outputs.get("id"), lt.outputs.get("name"), lt.name):
            return lt
    if len(templates) == 1:
        return templates[0]
    raise DataError(f"Auto Scaling group {group.name}: cannot tell which launch template it uses")


def needs_from_resources(ships: int, resources_: Iterable[ResourceLike]) -> Needs:
    """Count what the declared resources will hold once `pulumi up` has converged."""
    by_type: dict[str, list[ResourceLike]] = {}
    for res in resources_:
        by_type.setdefault(res.type, []).append(res)
    notes: list[str] = []
    instances: Counter[str] = Counter()
    ebs: Counter[str] = Counter()
    surge: Counter[str] = Counter()
    surge_ebs: Counter[str] = Counter()
    enis = 0

    templates = by_type.get(LAUNCH_TEMPLATE, [])
    for group in by_type.get(AUTOSCALING_GROUP, []):
        count = int(group.inputs.get("desiredCapacity") or group.inputs.get("minSize") or 0)
        top = int(group.inputs.get("maxSize") or count)
        # Sessions and demand mode start the group small; the room is what it must hold.
        count = max(count, min(ships, top))
        extra = max(0, top - count)
        lt = _template_for(group, templates)
        itype = lt.inputs.get("instanceType")
        if not itype:
            raise DataError(f"launch template {lt.name} sets no instanceType")
        vtype, gib = _launch_template_root(lt, notes)
        instances[itype] += count
        # Stopped warm-pool ships hold no vCPUs, only their root volumes.
        warm = int((group.inputs.get("warmPool") or {}).get("minSize") or 0)
        ebs[vtype] += gib * (count + warm)
        enis += count
        if extra:
            surge[itype] += extra
            surge_ebs[vtype] += gib * extra
    for inst in by_type.get(INSTANCE, []):
        instances[inst.inputs["instanceType"]] += 1
        vtype, gib = _root_volume(
            inst.inputs.get("rootBlockDevice"), notes, f"instance {inst.name}"
        )
        ebs[vtype] += gib
        enis += 1
    for vol in by_type.get(VOLUME, []):
        ebs[str(vol.inputs.get("type") or "gp2")] += int(vol.inputs.get("size") or 0)

    nats = len(by_type.get(NAT_GATEWAY, []))
    endpoint_azs = sum(
        len(ep.inputs.get("subnetIds") or [])
        for ep in by_type.get(VPC_ENDPOINT, [])
        if ep.inputs.get("vpcEndpointType") == "Interface"
    )
    return Needs(
        ships=ships,
        instances=dict(instances),
        ebs_gib=dict(ebs),
        elastic_ips=len(by_type.get(EIP, [])),
        network_interfaces=enis + nats + endpoint_azs,
        # Every new VPC brings its own default security group, which counts against the quota.
        security_groups=len(by_type.get(SECURITY_GROUP, [])) + len(by_type.get(VPC, [])),
        nat_gateways=nats,
        interface_endpoint_azs=endpoint_azs,
        vpcs=len(by_type.get(VPC, [])),
        internet_gateways=len(by_type.get(INTERNET_GATEWAY, [])),
        surge_instances=dict(surge),
        surge_ebs_gib=dict(surge_ebs),
        notes=tuple(notes),
    )


def needs_for(evaluation: Any) -> Needs:
    """Needs of an evaluated stack (campfleet.evaluate.Evaluation)."""
    return needs_from_resources(evaluation.config.ships, evaluation.resources)
