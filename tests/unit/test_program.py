"""The Pulumi program under mocks: structure, counts and security properties, on inputs."""

from __future__ import annotations

import base64
import gzip
import inspect
import ipaddress
import json
from collections import Counter
from pathlib import Path

import pulumi_aws as aws
import pulumi_docker as docker
import pulumi_random as random
import pytest
import yaml

from campfleet.evaluate import Evaluation, Resource, _digest, evaluate
from components import userdata
from components.config import read_stack_config

ROOT = Path(__file__).resolve().parents[2]
EDGE_AMI = "ami-0123456789abcdef0"
VOLUME = "aws:ebs/volume:Volume"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
GROUP = "aws:autoscaling/group:Group"
INSTANCE = "aws:ec2/instance:Instance"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SG = "aws:ec2/securityGroup:SecurityGroup"
PARAMETER = "aws:ssm/parameter:Parameter"
PASSWORD = "random:index/randomPassword:RandomPassword"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
# Types whose SDK class takes no `tags` (checked below against the SDK itself).
NOT_TAGGABLE = {
    PASSWORD: random.RandomPassword,
    "aws:ecr/lifecyclePolicy:LifecyclePolicy": aws.ecr.LifecyclePolicy,
    "aws:ec2/routeTableAssociation:RouteTableAssociation": aws.ec2.RouteTableAssociation,
    "docker:index/image:Image": docker.Image,
    ROLE_POLICY: aws.iam.RolePolicy,
    "aws:ec2/volumeAttachment:VolumeAttachment": aws.ec2.VolumeAttachment,
    "aws:route53/record:Record": aws.route53.Record,
}
EXPORTS = {
    "muxUrl",
    "muxPublicIp",
    "shipGroupName",
    "homeVolumeCount",
    "shipImage",
    "muxImage",
    "controlEndpoint",
}


@pytest.fixture(scope="module")
def dev() -> Evaluation:
    return evaluate(ROOT, "dev")


@pytest.fixture(scope="module")
def prod() -> Evaluation:
    return evaluate(ROOT, "prod")


@pytest.fixture(scope="module")
def edge() -> Evaluation:
    """Uneven spread, VPC endpoints instead of NAT (with a baked ship AMI), two CIDRs, a given
    password, an event name."""
    return evaluate(
        ROOT,
        "edge",
        {
            "aws:region": "us-west-2",
            "campfleet:ships": 7,
            "campfleet:availabilityZones": 3,
            "campfleet:shipEgress": "endpoints",
            "campfleet:shipAmi": EDGE_AMI,
            "campfleet:allowedCidrs": ["203.0.113.0/24", "198.51.100.7/32"],
            "campfleet:sharedPassword": {"secure": "correct-horse"},
            "campfleet:eventName": "pycon-ws",
            "campfleet:adminUsers": ["ann"],
        },
    )


def homes(evaluation: Evaluation) -> list[Resource]:
    return [v for v in evaluation.of_type(VOLUME) if v.inputs["tags"]["campfleet:role"] == "home"]


def by_name(evaluation: Evaluation) -> dict[str, Resource]:
    return {r.name: r for r in evaluation.resources}


def sg_ids(evaluation: Evaluation) -> dict[str, str]:
    """Security group id (mock output) -> resource name, to read rules by group."""
    return {r.outputs["id"]: r.name for r in evaluation.of_type(SG)}


def policy(evaluation: Evaluation, name: str) -> list[dict]:
    document = json.loads(by_name(evaluation)[name].inputs["policy"])
    return document["Statement"]


def test_exports_exactly(dev: Evaluation) -> None:
    assert set(dev.outputs) == EXPORTS
    assert dev.outputs["shipGroupName"] == "campfleet-dev-ships"
    assert dev.outputs["homeVolumeCount"] == 3
    assert dev.outputs["controlEndpoint"] == "http://10.0.0.10:8700"
    assert dev.outputs["muxUrl"] == f"https://{dev.outputs['muxPublicIp']}/"  # the IP's cert
    assert "/campfleet-dev-ship@sha256:" in dev.outputs["shipImage"]
    assert "/campfleet-dev-mux@sha256:" in dev.outputs["muxImage"]


@pytest.mark.parametrize("fixture", ["dev", "prod", "edge"])
def test_every_resource_is_parented_under_a_component(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    evaluation: Evaluation = request.getfixturevalue(fixture)
    components = {r.urn: r for r in evaluation.resources if not r.custom}
    snapshots = (
        {"campfleet:index:HomeSnapshots"} if evaluation.config.snapshot_every_hours else set()
    )
    assert {c.type for c in components.values()} == {
        "campfleet:index:Network",
        "campfleet:index:ContainerImage",
        "campfleet:index:Secrets",
        "campfleet:index:Mux",
        "campfleet:index:ShipFleet",
        *snapshots,
    }
    for component in components.values():
        assert component.parent.endswith(
            f"pulumi:pulumi:Stack::campfleet-{evaluation.config.stack}"
        )
    for resource in evaluation.resources:
        if resource.custom:
            parent = components.get(resource.parent)
            assert parent is not None, f"{resource.name} is not under a component"
            assert resource.name.startswith(f"{parent.name}-"), resource.name


def test_home_volume_count_is_ships(dev: Evaluation, prod: Evaluation, edge: Evaluation) -> None:
    for evaluation in (dev, prod, edge):
        assert len(homes(evaluation)) == evaluation.config.ships
        assert evaluation.outputs["homeVolumeCount"] == evaluation.config.ships
    assert "aws:ec2/natGateway:NatGateway" not in edge.counts()


def expected_counts(evaluation: Evaluation) -> dict[str, int]:
    """Every resource type the config implies, computed from the config alone."""
    c = evaluation.config
    zones, nat, cidrs = c.availability_zones, c.ship_egress == "nat", len(c.allowed_cidrs)
    counts = {
        "campfleet:index:Network": 1,
        "campfleet:index:ContainerImage": 2,
        "campfleet:index:Secrets": 1,
        "campfleet:index:ShipFleet": 1,
        "campfleet:index:Mux": 1,
        "aws:ec2/vpc:Vpc": 1,
        "aws:ec2/internetGateway:InternetGateway": 1,
        "aws:ec2/subnet:Subnet": 1 + zones,
        "aws:ec2/routeTable:RouteTable": 2,
        "aws:ec2/routeTableAssociation:RouteTableAssociation": 1 + zones,
        "aws:ec2/eip:Eip": 1 + nat,
        "aws:ec2/natGateway:NatGateway": int(nat),
        # the S3 gateway; without NAT also ECR API, ECR registry and Auto Scaling
        "aws:ec2/vpcEndpoint:VpcEndpoint": 1 + (0 if nat else 3),
        "aws:ec2/securityGroup:SecurityGroup": 2 + (0 if nat else 1),
        INGRESS: cidrs + 4 + (0 if nat else 1),  # 443 per CIDR, 80 (ACME + redirect) once
        EGRESS: 5,
        "aws:ecr/repository:Repository": 2,
        "aws:ecr/lifecyclePolicy:LifecyclePolicy": 2,
        "docker:index/image:Image": 2,
        PASSWORD: 6 - (c.shared_password is not None),
        PARAMETER: 6,
        "aws:iam/role:Role": 2,
        ROLE_POLICY: 2,
        "aws:iam/instanceProfile:InstanceProfile": 2,
        LAUNCH_TEMPLATE: 1,
        GROUP: 1,
        INSTANCE: 1,
        "aws:ec2/volumeAttachment:VolumeAttachment": 1,
        VOLUME: c.ships + 1,
    }
    if c.snapshot_every_hours:  # DLM policy + its role (issue 13)
        counts["campfleet:index:HomeSnapshots"] = 1
        counts["aws:dlm/lifecyclePolicy:LifecyclePolicy"] = 1
        counts["aws:iam/role:Role"] += 1
        counts[ROLE_POLICY] += 1
    return {kind: n for kind, n in counts.items() if n}


@pytest.mark.parametrize("fixture", ["dev", "prod", "edge"])
def test_exact_counts_per_type(fixture: str, request: pytest.FixtureRequest) -> None:
    evaluation: Evaluation = request.getfixturevalue(fixture)
    assert evaluation.counts() == expected_counts(evaluation)


def test_only_home_volumes_grow_with_ships() -> None:
    small = evaluate(ROOT, "dev", {"campfleet:ships": 2}).counts()
    large = evaluate(ROOT, "dev", {"campfleet:ships": 9}).counts()
    assert large.pop(VOLUME) - small.pop(VOLUME) == 7
    assert large == small


def test_home_volumes_spread_evenly_over_zones(edge: Evaluation) -> None:
    volumes = homes(edge)
    per_zone = Counter(v.inputs["availabilityZone"] for v in volumes)
    assert sorted(per_zone) == ["us-west-2a", "us-west-2b", "us-west-2c"]
    assert sorted(per_zone.values()) == [2, 2, 3]
    subnet_zones = {
        r.inputs["availabilityZone"]
        for r in edge.of_type("aws:ec2/subnet:Subnet")
        if r.inputs["tags"]["campfleet:role"] == "ship"
    }
    assert subnet_zones == set(per_zone)


def test_home_volumes_encrypted_tagged_and_slot_indexed(edge: Evaluation) -> None:
    volumes = sorted(homes(edge), key=lambda v: v.name)
    assert [v.inputs["tags"]["campfleet:slot"] for v in volumes] == [str(i) for i in range(7)]
    for volume in volumes:
        assert volume.inputs["encrypted"] is True
        assert volume.inputs["type"] == "gp3"
        assert volume.inputs["size"] == edge.config.home_volume_gib
        assert volume.inputs["tags"]["campfleet:role"] == "home"
        assert volume.inputs["tags"]["campfleet:event"] == "pycon-ws"


def test_home_volume_protection(dev: Evaluation, prod: Evaluation) -> None:
    for evaluation, protected in ((dev, False), (prod, True)):
        for volume in homes(evaluation):
            assert volume.protect is protected
            assert volume.inputs["tags"]["campfleet:protect"] == str(protected).lower()
        state = by_name(evaluation)["mux-state"]
        assert state.protect is protected  # the registry of who owns which volume
    assert not any(r.protect for r in prod.resources if r.type != VOLUME)


def test_launch_template_security(dev: Evaluation) -> None:
    template = dev.one(LAUNCH_TEMPLATE).inputs
    assert template["metadataOptions"] == {
        "httpEndpoint": "enabled",
        "httpTokens": "required",
        "httpPutResponseHopLimit": 1,
    }
    (device,) = template["blockDeviceMappings"]
    assert device["ebs"]["encrypted"] == "true"
    assert device["ebs"]["volumeType"] == "gp3"
    assert device["ebs"]["volumeSize"] == dev.config.ship_root_volume_gib
    (interface,) = template["networkInterfaces"]
    assert interface["associatePublicIpAddress"] == "false"
    ship_sg = next(i for i, n in sg_ids(dev).items() if n == "network-ship-sg")
    assert interface["securityGroups"] == [ship_sg]
    assert template["imageId"] == f"resolve:ssm:{userdata.AMI_PARAMETER}"
    assert userdata.AMI_PARAMETER == "/aws/service/debian/release/12/latest/amd64"
    assert template["instanceType"] == dev.config.ship_instance_type
    kinds = {spec["resourceType"]: spec["tags"] for spec in template["tagSpecifications"]}
    assert set(kinds) == {"instance", "volume", "network-interface"}
    for tags in kinds.values():
        assert tags["campfleet:stack"] == "dev" and tags["campfleet:role"] == "ship"


def test_mux_instance_security(dev: Evaluation) -> None:
    mux = dev.one(INSTANCE).inputs
    assert mux["metadataOptions"]["httpTokens"] == "required"
    assert mux["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert mux["rootBlockDevice"]["encrypted"] is True
    assert mux["privateIp"] == "10.0.0.10"
    eips = {r.name: r for r in dev.of_type("aws:ec2/eip:Eip")}
    assert eips["mux-eip"].inputs["instance"] == dev.one(INSTANCE).outputs["id"]


def test_mux_state_volume_follows_the_mux(dev: Evaluation) -> None:
    names = by_name(dev)
    state, mux = names["mux-state"], names["mux-instance"]
    public = next(
        s
        for s in dev.of_type("aws:ec2/subnet:Subnet")
        if s.inputs["tags"]["campfleet:role"] == "mux"
    )
    assert state.inputs["availabilityZone"] == public.inputs["availabilityZone"]
    assert state.inputs["encrypted"] is True and state.inputs["type"] == "gp3"
    attachment = dev.one("aws:ec2/volumeAttachment:VolumeAttachment").inputs
    assert attachment["volumeId"] == state.outputs["id"]
    assert attachment["instanceId"] == mux.outputs["id"]
    user_data = gzip.decompress(base64.b64decode(mux.inputs["userDataBase64"])).decode()
    assert state.outputs["id"].replace("-", "") in user_data


def test_every_ebs_device_is_encrypted(prod: Evaluation) -> None:
    assert all(v.inputs["encrypted"] is True for v in prod.of_type(VOLUME))
    assert prod.one(INSTANCE).inputs["rootBlockDevice"]["encrypted"] is True
    template = prod.one(LAUNCH_TEMPLATE).inputs
    assert all(m["ebs"]["encrypted"] == "true" for m in template["blockDeviceMappings"])


def test_ingress_rules_exactly(edge: Evaluation) -> None:
    groups = sg_ids(edge)

    def source(rule: Resource) -> str:
        if "referencedSecurityGroupId" in rule.inputs:
            return groups[rule.inputs["referencedSecurityGroupId"]]
        return rule.inputs["cidrIpv4"]

    rules = {
        (
            groups[r.inputs["securityGroupId"]],
            r.inputs["ipProtocol"],
            r.inputs["fromPort"],
            r.inputs["toPort"],
            source(r),
        )
        for r in edge.of_type(INGRESS)
    }
    assert rules == {
        # HTTPS for the allowed CIDRs; port 80 only answers the ACME challenge and redirects
        # to HTTPS, for anyone (the CA validates from addresses it does not announce).
        ("network-mux-sg", "tcp", 443, 443, "203.0.113.0/24"),
        ("network-mux-sg", "tcp", 443, 443, "198.51.100.7/32"),
        ("network-mux-sg", "tcp", 80, 80, "0.0.0.0/0"),
        ("network-mux-sg", "tcp", 8700, 8700, "network-ship-sg"),
        ("network-mux-sg", "tcp", 8081, 8081, "network-ship-sg"),
        ("network-ship-sg", "tcp", 8888, 8899, "network-mux-sg"),
        ("network-endpoints-sg", "tcp", 443, 443, "network-ship-sg"),
    }
    for group in edge.of_type(SG):
        assert "ingress" not in group.inputs and "egress" not in group.inputs


def test_no_ssh_and_world_only_on_web_ports(dev: Evaluation, prod: Evaluation) -> None:
    for evaluation in (dev, prod):
        for rule in evaluation.of_type(INGRESS):
            ports = range(rule.inputs["fromPort"], rule.inputs["toPort"] + 1)
            assert 22 not in ports
            if rule.inputs.get("cidrIpv4") == "0.0.0.0/0":
                assert (rule.inputs["fromPort"], rule.inputs["toPort"]) in ((80, 80), (443, 443))


def test_egress_rules_are_narrow(dev: Evaluation) -> None:
    groups = sg_ids(dev)
    rules = {
        (
            groups[r.inputs["securityGroupId"]],
            r.inputs["fromPort"],
            r.inputs["toPort"],
            groups.get(r.inputs.get("referencedSecurityGroupId"), r.inputs.get("cidrIpv4")),
        )
        for r in dev.of_type(EGRESS)
    }
    assert rules == {
        ("network-mux-sg", 443, 443, "0.0.0.0/0"),
        ("network-mux-sg", 8888, 8899, "network-ship-sg"),
        ("network-ship-sg", 443, 443, "0.0.0.0/0"),
        ("network-ship-sg", 8700, 8700, "network-mux-sg"),
        ("network-ship-sg", 8081, 8081, "network-mux-sg"),
    }


def test_ship_subnets_private(edge: Evaluation) -> None:
    subnets = edge.of_type("aws:ec2/subnet:Subnet")
    ship_subnets = [s for s in subnets if s.inputs["tags"]["campfleet:role"] == "ship"]
    assert len(ship_subnets) == 3
    assert all(s.inputs["mapPublicIpOnLaunch"] is False for s in subnets)
    group = edge.one(GROUP).inputs
    assert sorted(group["vpcZoneIdentifiers"]) == sorted(s.outputs["id"] for s in ship_subnets)
    routes = {
        r.name: r.inputs.get("routes", []) for r in edge.of_type("aws:ec2/routeTable:RouteTable")
    }
    assert routes["network-private-routes"] == []  # endpoints mode: no way out but endpoints


def test_interface_endpoints_when_no_nat(edge: Evaluation) -> None:
    endpoints = {
        r.inputs["serviceName"]: r.inputs for r in edge.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    }
    region = "us-west-2"
    assert endpoints[f"com.amazonaws.{region}.s3"]["vpcEndpointType"] == "Gateway"
    for service in ("ecr.api", "ecr.dkr", "autoscaling"):
        endpoint = endpoints[f"com.amazonaws.{region}.{service}"]
        assert endpoint["vpcEndpointType"] == "Interface"
        assert endpoint["privateDnsEnabled"] is True
        assert len(endpoint["subnetIds"]) == 3
    # ships hold no fleet secret (attestation), so an SSM endpoint would only cost money
    assert f"com.amazonaws.{region}.ssm" not in endpoints
    assert len(endpoints) == 4  # the three above and the S3 gateway


def test_s3_endpoint_reads_only_the_buckets_ships_need_without_nat(
    dev: Evaluation, edge: Evaluation
) -> None:
    """shipEgress endpoints means no internet: S3 must not be a way out (PutObject to any
    bucket) or in (GetObject from any bucket); with a NAT there is nothing to close."""
    s3 = "aws:ec2/vpcEndpoint:VpcEndpoint"
    gateway = next(r for r in edge.of_type(s3) if r.inputs["serviceName"].endswith(".s3"))
    statements = json.loads(gateway.inputs["policy"])["Statement"]
    assert {(s["Effect"], s["Action"], s["Resource"]) for s in statements} == {
        ("Allow", "s3:GetObject", "arn:aws:s3:::prod-us-west-2-starport-layer-bucket/*"),
    }
    nat = next(r for r in dev.of_type(s3) if r.inputs["serviceName"].endswith(".s3"))
    assert "policy" not in nat.inputs


def test_ships_boot_debian_12_or_the_stacks_baked_ami(dev: Evaluation, edge: Evaluation) -> None:
    """The mux resolves the same public Debian 12 parameter; a stack without internet for its
    ships (shipEgress endpoints) names an AMI with the packages baked in instead."""
    assert edge.one(LAUNCH_TEMPLATE).inputs["imageId"] == EDGE_AMI
    (mux,) = dev.of_type("aws:ec2/instance:Instance")
    # The mocks answer an SSM parameter with an AMI id made from its name.
    assert mux.inputs["ami"] == f"ami-{_digest(userdata.AMI_PARAMETER)[:17]}"
    assert dev.one(LAUNCH_TEMPLATE).inputs["imageId"] == f"resolve:ssm:{userdata.AMI_PARAMETER}"


def test_auto_scaling_group(prod: Evaluation) -> None:
    group = prod.one(GROUP).inputs
    template = prod.one(LAUNCH_TEMPLATE)
    assert group["name"] == "campfleet-prod-ships"
    assert group["desiredCapacity"] == group["minSize"] == 150
    assert group["maxSize"] == 165
    assert group["launchTemplate"] == {
        "id": template.outputs["id"],
        "version": str(template.outputs["latestVersion"]),
    }
    assert group["instanceRefresh"]["strategy"] == "Rolling"
    assert group["forceDelete"] is True  # destroy must not stall on protected ships
    assert group["healthCheckGracePeriod"] == 300
    (hook,) = group["initialLifecycleHooks"]
    assert hook["lifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    assert 60 <= hook["heartbeatTimeout"] <= 900
    tags = {t["key"]: t for t in group["tags"]}
    assert tags["campfleet:stack"]["value"] == "prod" and tags["Name"]["value"]
    assert all(t["propagateAtLaunch"] is True for t in tags.values())


def test_every_taggable_resource_is_tagged(dev: Evaluation, edge: Evaluation) -> None:
    for cls in NOT_TAGGABLE.values():
        assert "tags" not in inspect.signature(cls._internal_init).parameters, cls
    for evaluation in (dev, edge):
        for resource in evaluation.resources:
            if not resource.custom or resource.type in NOT_TAGGABLE:
                continue
            tags = resource.inputs.get("tags")
            if resource.type == GROUP:
                tags = {t["key"]: t["value"] for t in tags}
            assert tags, f"{resource.name} has no tags"
            assert tags["campfleet:stack"] == evaluation.config.stack, resource.name
            assert tags["campfleet:event"] == evaluation.config.event_name, resource.name
            assert tags["Name"], resource.name


def test_no_statement_is_wider_than_aws_allows(dev: Evaluation) -> None:
    unscopable = {
        "ecr:GetAuthorizationToken",
        "ec2:DescribeInstances",
        "ec2:DescribeVolumes",
        "cloudwatch:PutMetricData",
    }
    for name in ("mux-policy", "ships-policy"):
        for statement in policy(dev, name):
            assert statement["Effect"] == "Allow"
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            assert all(":*" not in action and action != "*" for action in actions)
            if statement["Resource"] == "*":
                assert set(actions) <= unscopable, statement
    (metrics,) = [s for s in policy(dev, "mux-policy") if s["Sid"] == "Metrics"]
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": "campfleet"}}


def test_ship_role_least_privilege(dev: Evaluation) -> None:
    statements = {s["Sid"]: s for s in policy(dev, "ships-policy")}
    # No SSM at all: ships hold no fleet-wide secret; each attests for a key of its own.
    assert set(statements) == {"EcrToken", "EcrPull", "TerminationHook"}
    names = by_name(dev)
    assert not any("ssm:" in str(s["Action"]) for s in statements.values())
    assert statements["EcrPull"]["Resource"] == names["ship-image-repo"].outputs["arn"]
    hook = statements["TerminationHook"]
    assert hook["Action"] == "autoscaling:CompleteLifecycleAction"
    assert hook["Resource"] == (
        "arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:*"
        ":autoScalingGroupName/campfleet-dev-ships"
    )


def test_mux_role_least_privilege(dev: Evaluation) -> None:
    statements = {s["Sid"]: s for s in policy(dev, "mux-policy")}
    names = by_name(dev)
    volumes = statements["HomeVolumes"]
    assert volumes["Resource"] == "arn:aws:ec2:eu-west-1:123456789012:volume/*"
    assert volumes["Condition"]["StringEquals"] == {
        "aws:ResourceTag/campfleet:stack": "dev",
        "aws:ResourceTag/campfleet:role": "home",
    }
    owner_tag = statements["HomeVolumeOwnerTag"]
    assert owner_tag["Action"] == "ec2:CreateTags" and owner_tag["Resource"] == volumes["Resource"]
    assert owner_tag["Condition"] == {
        "StringEquals": volumes["Condition"]["StringEquals"],
        "ForAllValues:StringEquals": {"aws:TagKeys": ["campfleet:owner"]},
    }
    instances = statements["ShipInstances"]
    assert instances["Resource"] == "arn:aws:ec2:eu-west-1:123456789012:instance/*"
    # Ships only: the mux carries the same stack tag and must not get attendee volumes.
    assert instances["Condition"]["StringEquals"] == {
        "aws:ResourceTag/campfleet:stack": "dev",
        "aws:ResourceTag/campfleet:role": "ship",
    }
    template = dev.one(LAUNCH_TEMPLATE).inputs
    launched = {s["resourceType"]: s["tags"] for s in template["tagSpecifications"]}
    assert launched["instance"]["campfleet:role"] == "ship"
    assert names["mux-instance"].inputs["tags"]["campfleet:role"] != "ship"
    assert statements["ShipGroup"]["Resource"] == names["ships-group"].outputs["arn"]
    parameter_arns = sorted(p.outputs["arn"] for p in dev.of_type(PARAMETER))
    assert sorted(statements["Parameters"]["Resource"]) == parameter_arns
    assert statements["EcrPull"]["Resource"] == names["mux-image-repo"].outputs["arn"]


def test_secrets_are_secure_strings_and_pulumi_secrets(dev: Evaluation, edge: Evaluation) -> None:
    for parameter in dev.of_type(PARAMETER):
        assert parameter.inputs["type"] == "SecureString"
        assert parameter.inputs["name"].startswith("/campfleet/dev/")
        assert "value" in parameter.secret_inputs
    values = {p.inputs["name"].rsplit("/", 1)[1]: p.inputs["value"] for p in dev.of_type(PARAMETER)}
    for hex_secret in ("cookie-secret", "proxy-token"):
        assert len(values[hex_secret]) == 64
        bytes.fromhex(values[hex_secret])
    given = next(p for p in edge.of_type(PARAMETER) if p.inputs["name"].endswith("shared-password"))
    assert given.inputs["value"] == "correct-horse" and "value" in given.secret_inputs


def test_no_secret_value_in_user_data(dev: Evaluation) -> None:
    user_data = [
        gzip.decompress(base64.b64decode(dev.one(LAUNCH_TEMPLATE).inputs["userData"])).decode(),
        gzip.decompress(base64.b64decode(dev.one(INSTANCE).inputs["userDataBase64"])).decode(),
    ]
    for parameter in dev.of_type(PARAMETER):
        for text in user_data:
            assert parameter.inputs["value"] not in text
            assert parameter.inputs["name"] in user_data[1]  # the mux gets every name


def test_event_name_and_images(edge: Evaluation) -> None:
    repositories = {
        r.inputs["name"]: r.inputs for r in edge.of_type("aws:ecr/repository:Repository")
    }
    assert set(repositories) == {"campfleet-edge-ship", "campfleet-edge-mux"}
    for repository in repositories.values():
        assert repository["imageScanningConfiguration"] == {"scanOnPush": True}
    lifecycle = [
        json.loads(r.inputs["policy"])
        for r in edge.of_type("aws:ecr/lifecyclePolicy:LifecyclePolicy")
    ]
    assert len(lifecycle) == 2
    for document in lifecycle:
        # Builds are pushed as `latest` and used by digest: earlier builds are untagged images
        # that ships may still pull, so no rule may expire them by age or expire `any`.
        (rule,) = document["rules"]
        assert rule["selection"] == {
            "tagStatus": "untagged",
            "countType": "imageCountMoreThan",
            "countNumber": 10,
        }
        assert rule["action"] == {"type": "expire"}
    images = {r.name: r.inputs for r in edge.of_type("docker:index/image:Image")}
    assert images["ship-image-image"]["build"]["dockerfile"] == "images/ship/Dockerfile"
    assert images["mux-image-image"]["build"]["dockerfile"] == "images/mux/Dockerfile"
    for image in images.values():
        assert (ROOT / image["build"]["dockerfile"]).is_file()
        assert image["build"]["platform"] == "linux/amd64"


@pytest.mark.parametrize(("ships", "zones"), [(1, 6), (5, 1)])
def test_extreme_shapes(ships: int, zones: int) -> None:
    evaluation = evaluate(
        ROOT, "dev", {"campfleet:ships": ships, "campfleet:availabilityZones": zones}
    )
    counts = evaluation.counts()
    assert len(homes(evaluation)) == ships
    assert counts["aws:ec2/subnet:Subnet"] == zones + 1
    group = evaluation.one(GROUP).inputs
    assert len(group["vpcZoneIdentifiers"]) == zones
    assert group["desiredCapacity"] == ships and group["maxSize"] > ships
    networks = [
        ipaddress.ip_network(s.inputs["cidrBlock"])
        for s in evaluation.of_type("aws:ec2/subnet:Subnet")
    ]
    vpc = ipaddress.ip_network(evaluation.one("aws:ec2/vpc:Vpc").inputs["cidrBlock"])
    assert all(n.subnet_of(vpc) for n in networks)
    assert not any(a.overlaps(b) for i, a in enumerate(networks) for b in networks[i + 1 :])


@pytest.mark.parametrize("role", ["ship", "mux"])
def test_dockerfiles_pin_bases_and_copy_existing_paths(role: str) -> None:
    """Every COPY source exists, and the public base AWS builds on (the BASE_IMAGE default; the
    Docker tests build on a local stand-in) is pinned."""
    lines = (ROOT / "images" / role / "Dockerfile").read_text().splitlines()
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM ${BASE_IMAGE}"]
    bases = [line.split("=", 1)[1] for line in lines if line.startswith("ARG BASE_IMAGE=")]
    assert len(bases) == 1 and ":" in bases[0] and not bases[0].endswith(":latest")
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"{role}: COPY {source} does not exist"
    pins = " ".join(lines)
    assert "jupyterhub==6.1.1" in pins  # the hub and the single-user servers must match
    assert "jupyterhub==6.1.1" in (ROOT / "requirements.txt").read_text()


def test_domain_with_a_hosted_zone_gets_its_record_and_https_url() -> None:
    values = {
        **read_stack_config(ROOT, "dev"),
        "campfleet:domainName": "jupyter.example.org",
        "campfleet:hostedZoneId": "Z0123456789ABC",
        "campfleet:acmeEmail": "organizer@example.org",
    }
    ev = evaluate(ROOT, "dev", values)
    records = {r.inputs["name"]: r for r in ev.of_type("aws:route53/record:Record")}
    # The mux's name, and (per-user subdomains, issue 15) every name under it.
    assert set(records) == {"jupyter.example.org", "*.jupyter.example.org"}
    for record in records.values():
        assert record.inputs["zoneId"] == "Z0123456789ABC" and record.inputs["type"] == "A"
        assert record.inputs["records"] == [ev.outputs["muxPublicIp"]]
    assert ev.outputs["muxUrl"] == "https://jupyter.example.org/"
    assert "muxDnsRecord" not in ev.outputs
    _, settings = _mux_settings(ev)
    assert settings["tls"]["userSubdomains"] is True
    # The mux may write only the DNS-01 challenge's TXT record, in that zone.
    statements = {s["Sid"]: s for s in policy(ev, "mux-policy")}
    change = statements["AcmeDnsChallenge"]
    assert change["Action"] == "route53:ChangeResourceRecordSets"
    assert change["Resource"] == "arn:aws:route53:::hostedzone/Z0123456789ABC"
    only = change["Condition"]["ForAllValues:StringEquals"]
    assert only["route53:ChangeResourceRecordSetsNormalizedRecordNames"] == [
        "_acme-challenge.jupyter.example.org"
    ]
    assert only["route53:ChangeResourceRecordSetsRecordTypes"] == ["TXT"]
    assert statements["AcmeDnsFindZone"]["Action"] == [
        "route53:ListHostedZones",
        "route53:GetChange",
    ]


def test_domain_without_a_zone_says_which_record_to_create(dev: Evaluation) -> None:
    values = {**read_stack_config(ROOT, "dev"), "campfleet:domainName": "jupyter.example.org"}
    ev = evaluate(ROOT, "dev", values)
    assert not ev.of_type("aws:route53/record:Record") and not dev.of_type(
        "aws:route53/record:Record"
    )
    ip = ev.outputs["muxPublicIp"]
    assert ev.outputs["muxDnsRecord"] == f"create: jupyter.example.org A {ip} (TTL 300)"
    # No zone: no wildcard certificate, so one origin and no Route 53 rights.
    assert _mux_settings(ev)[1]["tls"]["userSubdomains"] is False
    assert not any(s["Sid"].startswith("AcmeDns") for s in policy(ev, "mux-policy"))


def _mux_settings(evaluation: Evaluation) -> tuple[str, dict]:
    """The mux's user data and the mux.json it writes."""
    text = gzip.decompress(
        base64.b64decode(evaluation.one(INSTANCE).inputs["userDataBase64"])
    ).decode()
    files = yaml.safe_load(text)["write_files"]
    content = next(f["content"] for f in files if f["path"] == "/etc/campfleet/mux.json")
    return text, json.loads(content)


def test_auth_modes_reach_the_mux_with_secrets_in_ssm_only() -> None:
    oauth = evaluate(
        ROOT,
        "oauth",
        {
            "aws:region": "eu-west-1",
            "campfleet:ships": 2,
            "campfleet:auth": "oauth",
            "campfleet:oauthClientId": "Iv1.abc",
            "campfleet:oauthCallbackUrl": "https://ws.example.org/hub/oauth_callback",
            "campfleet:oauthAllowedOrganizations": ["ws-org"],
            "campfleet:oauthClientSecret": {"secure": "gh-secret-value"},
        },
    )
    secret = by_name(oauth)["secrets-oauth-client-secret-parameter"]
    assert secret.inputs["type"] == "SecureString"
    text, settings = _mux_settings(oauth)
    assert "gh-secret-value" not in text
    assert settings["parameters"]["oauthClientSecret"] == "/campfleet/oauth/oauth-client-secret"
    assert settings["auth"] == "oauth"
    assert settings["oauth"] == {
        "provider": "github",
        "clientId": "Iv1.abc",
        "callbackUrl": "https://ws.example.org/hub/oauth_callback",
        "allowedUsers": [],
        "allowedOrganizations": ["ws-org"],
    }
    parameters = {s["Sid"]: s for s in policy(oauth, "mux-policy")}["Parameters"]["Resource"]
    assert secret.outputs["arn"] in parameters

    codes = evaluate(
        ROOT, "codes", {"aws:region": "eu-west-1", "campfleet:ships": 2, "campfleet:auth": "codes"}
    )
    _, settings = _mux_settings(codes)
    assert settings["auth"] == "codes" and settings["adminTokenHours"] == 168
    assert settings["parameters"]["attendeeCodes"] == "/campfleet/codes/attendee-codes"
    parameters = {s["Sid"]: s for s in policy(codes, "mux-policy")}["Parameters"]["Resource"]
    assert "arn:aws:ssm:eu-west-1:123456789012:parameter/campfleet/codes/attendee-codes" in (
        parameters
    )
