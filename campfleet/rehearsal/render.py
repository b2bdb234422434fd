"""What a rehearsal boots, taken from the stack exactly as `pulumi up` would send it.

The Pulumi program runs in-process under mocks (campfleet.evaluate, the same evaluation
`campfleet plan` uses); the mux instance's `userDataBase64` and the ship launch template's
`userData` are the packed texts components/userdata.py rendered, unpacked here byte for byte.
Addresses, volumes, parameter names and secret values come from the same resource graph, so
the local AWS answers with the stack's own names.
"""

from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

VPC = "aws:ec2/vpc:Vpc"
SUBNET = "aws:ec2/subnet:Subnet"
INSTANCE = "aws:ec2/instance:Instance"
TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
VOLUME = "aws:ebs/volume:Volume"
PARAMETER = "aws:ssm/parameter:Parameter"
GROUP = "aws:autoscaling/group:Group"
IMAGE = "docker:index/image:Image"


def unpack(packed: str) -> str:
    """The user data text from EC2's gzip + base64 form."""
    return gzip.decompress(base64.b64decode(packed)).decode()


@dataclass
class RenderedStack:
    """The facts of one stack a rehearsal needs, all from one evaluation."""

    stack: str
    region: str
    vpc_cidr: str
    mux_ip: str
    mux_user_data: str
    ship_user_data: str
    state_volume: str  # vol-...
    state_zone: str
    home_volumes: List[Tuple[str, str]]  # (vol-..., zone)
    ship_subnets: List[Tuple[str, str]]  # (zone, cidr)
    group_name: str
    ships: int
    secrets: Dict[str, str]  # SSM parameter name -> value
    images: Dict[str, str] = field(default_factory=dict)  # role -> image name (no tag)
    # Every EBS volume of the stack: resource name -> (zone, GiB, tags), for the local AWS.
    volumes: Dict[str, Tuple[str, int, Dict[str, str]]] = field(default_factory=dict)
    hooks: Dict[str, str] = field(default_factory=dict)  # "launching"/"terminating" -> name
    outputs: Dict[str, Any] = field(default_factory=dict)


def _one(resources: List[Any], kind: str, hint: str = "") -> Any:
    found = [r for r in resources if r.type == kind and hint in r.name]
    if len(found) != 1:
        raise LookupError(f"rehearsal: expected one {kind} named *{hint}*, found {len(found)}")
    return found[0]


def from_evaluation(ev: Any, stack: str, region: str) -> RenderedStack:
    resources = list(ev.resources)
    mux = _one(resources, INSTANCE)
    template = _one(resources, TEMPLATE)
    volumes = [r for r in resources if r.type == VOLUME]
    state = [r for r in volumes if "state" in r.name]
    if len(state) != 1:
        raise LookupError(f"rehearsal: expected one mux state volume, found {len(state)}")
    homes = sorted((r for r in volumes if r is not state[0]), key=lambda r: r.name)
    subnets = [
        (r.inputs.get("availabilityZone", ""), r.inputs["cidrBlock"])
        for r in resources
        if r.type == SUBNET
        and r.inputs.get("mapPublicIpOnLaunch") is not True
        and "public" not in r.name
    ]
    group = _one(resources, GROUP)
    images = {}
    for r in resources:
        if r.type == IMAGE:
            role = "mux" if "mux" in r.name else "ship"
            images[role] = str(r.inputs.get("imageName", "")).rsplit(":", 1)[0]
    return RenderedStack(
        stack=stack,
        region=region,
        vpc_cidr=_one(resources, VPC).inputs["cidrBlock"],
        mux_ip=mux.inputs["privateIp"],
        mux_user_data=unpack(mux.inputs["userDataBase64"]),
        ship_user_data=unpack(template.inputs["userData"]),
        state_volume=state[0].outputs["id"],
        state_zone=state[0].inputs.get("availabilityZone", ""),
        home_volumes=[(r.outputs["id"], r.inputs.get("availabilityZone", "")) for r in homes],
        ship_subnets=sorted(subnets),
        group_name=str(group.inputs.get("name") or group.outputs.get("id")),
        ships=int(ev.config.ships),
        secrets={
            str(r.inputs["name"]): str(r.inputs["value"])
            for r in resources
            if r.type == PARAMETER and r.inputs.get("type") == "SecureString"
        },
        images=images,
        volumes={
            r.name: (
                str(r.inputs.get("availabilityZone", "")),
                int(r.inputs.get("size", 1)),
                dict(r.inputs.get("tags") or {}),
            )
            for r in volumes
        },
        hooks={
            str(h.get("lifecycleTransition", "")).rsplit("_", 1)[-1].lower(): str(h["name"])
            for h in group.inputs.get("initialLifecycleHooks") or []
        },
        outputs=dict(ev.outputs),
    )


def render(
    project_dir: Path,
    stack: str,
    values: Mapping[str, Any],
    digests: Optional[Mapping[str, str]] = None,
    ids: Optional[Mapping[str, str]] = None,
) -> RenderedStack:
    """Evaluate the stack (with the local registry's digests) and take what a rehearsal boots."""
    from campfleet.evaluate import DEFAULT_REGION, evaluate

    region = str(values.get("aws:region") or DEFAULT_REGION)
    return from_evaluation(evaluate(project_dir, stack, values, digests, ids), stack, region)
