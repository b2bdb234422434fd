"""AwsCloud against moto's EC2/Auto Scaling/CloudWatch; LocalCloud against a temp directory.

moto covers everything AwsCloud calls. Two things moto cannot do are simulated, and say so:
a detach that never completes (a dead ship) and a transient AWS failure (HTTP 503). No test
needs botocore's Stubber: it answers above the retry layer, so it could not show retries.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from moto import mock_aws

from campfleet.mux.cloud import AwsCloud, CloudError, LocalCloud

REGION = "us-east-1"
STACK = "dev"
GROUP = "campfleet-dev-ships"
AMI = "ami-12c6146b"  # in moto's built-in image list (looking one up costs a second per test)


@dataclass
class World:
    ec2: Any
    autoscaling: Any
    cloudwatch: Any
    instances: list[str]
    zone_of: dict[str, str]
    home: dict[str, str]  # volume id -> zone, this stack's home volumes
    cloud: AwsCloud


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        autoscaling = boto3.client("autoscaling", region_name=REGION)
        cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        zones = [f"{REGION}a", f"{REGION}b"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=z)["Subnet"][
                "SubnetId"
            ]
            for i, z in enumerate(zones)
        ]
        ec2.create_launch_template(
            LaunchTemplateName="ship",
            LaunchTemplateData={"ImageId": AMI, "InstanceType": "t3.micro"},
        )
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=GROUP,
            LaunchTemplate={"LaunchTemplateName": "ship", "Version": "$Latest"},
            MinSize=2,
            MaxSize=4,
            DesiredCapacity=2,
            VPCZoneIdentifier=",".join(subnets),
        )
        group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])
        instances = [i["InstanceId"] for i in group["AutoScalingGroups"][0]["Instances"]]
        zone_of = {
            i["InstanceId"]: i["Placement"]["AvailabilityZone"]
            for r in ec2.describe_instances(InstanceIds=instances)["Reservations"]
            for i in r["Instances"]
        }

        def volume(zone: str, tags: dict[str, str]) -> str:
            spec = [
                {
                    "ResourceType": "volume",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ]
            return ec2.create_volume(
                AvailabilityZone=zone, Size=10, VolumeType="gp3", TagSpecifications=spec
            )["VolumeId"]

        home_tags = {"campfleet:stack": STACK, "campfleet:role": "home"}
        home = {volume(zone_of[i], home_tags): zone_of[i] for i in instances for _ in range(2)}
        volume(zones[0], {"campfleet:stack": "prod", "campfleet:role": "home"})
        volume(zones[0], {"campfleet:stack": STACK, "campfleet:role": "scratch"})
        volume(zones[0], {"Name": "left from an earlier event"})
        cloud = AwsCloud(REGION, STACK, GROUP, poll_interval=0.01, detach_timeout=0.2)
        yield World(ec2, autoscaling, cloudwatch, instances, zone_of, home, cloud)


def attachments(w: World, volume_id: str) -> list[tuple[str, str, str]]:
    vol = w.ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    return [(a["InstanceId"], a["Device"], a["State"]) for a in vol["Attachments"]]


def volumes_in(w: World, zone: str) -> list[str]:
    return sorted(v for v, z in w.home.items() if z == zone)


async def test_list_volumes_returns_only_this_stacks_home_volumes(world: World) -> None:
    assert await world.cloud.list_volumes() == sorted(world.home.items())


async def test_attach_picks_free_devices_and_is_idempotent(world: World) -> None:
    ship = world.instances[0]
    first, second = volumes_in(world, world.zone_of[ship])[:2]
    assert await world.cloud.attach_volume(first, ship) == "/dev/sdf"
    assert await world.cloud.attach_volume(second, ship) == "/dev/sdg"
    assert attachments(world, first) == [(ship, "/dev/sdf", "attached")]
    assert attachments(world, second) == [(ship, "/dev/sdg", "attached")]
    assert await world.cloud.attach_volume(first, ship) == "/dev/sdf"
    assert [c.action for c in world.cloud.calls] == ["attach", "attach"]


async def test_attach_moves_volume_off_a_dead_ship(world: World) -> None:
    old = world.instances[0]
    zone = world.zone_of[old]
    new = world.ec2.run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": zone}
    )["Instances"][0]["InstanceId"]
    volume = volumes_in(world, zone)[0]
    await world.cloud.attach_volume(volume, old)
    world.ec2.stop_instances(InstanceIds=[old])  # dead: nothing there writes to the volume
    device = await world.cloud.attach_volume(volume, new)
    assert attachments(world, volume) == [(new, device, "attached")]
    assert [(c.action, c.detail) for c in world.cloud.calls] == [
        ("attach", f"to {old} as /dev/sdf"),
        ("detach", f"from {old}"),
        ("attach", f"to {new} as {device}"),
    ]


def agent_unmounted(world: World) -> None:
    """The registry's answer once the ship's agent reported the volume unmounted."""
    world.cloud.mount_status = lambda volume, ship: (False, time.time())


async def test_detach_then_detach_again_is_a_no_op(world: World) -> None:
    agent_unmounted(world)
    ship = world.instances[0]
    volume = volumes_in(world, world.zone_of[ship])[0]
    await world.cloud.attach_volume(volume, ship)
    await world.cloud.detach_volume(volume, ship)
    assert attachments(world, volume) == []
    await world.cloud.detach_volume(volume, ship)
    assert [c.action for c in world.cloud.calls] == ["attach", "detach"]


async def test_stuck_detach_is_forced(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto always detaches at once; a dead ship's never-ending detach is simulated here."""
    agent_unmounted(world)
    ship = world.instances[0]
    volume = volumes_in(world, world.zone_of[ship])[0]
    await world.cloud.attach_volume(volume, ship)
    real = world.cloud._ec2.detach_volume
    asked: list[bool] = []

    def detach_only_when_forced(**kwargs: Any) -> Any:
        asked.append(bool(kwargs.get("Force")))
        return real(**kwargs) if kwargs.get("Force") else {"State": "detaching"}

    monkeypatch.setattr(world.cloud._ec2, "detach_volume", detach_only_when_forced)
    await world.cloud.detach_volume(volume, ship)
    assert asked == [False, True]
    assert attachments(world, volume) == []
    assert world.cloud.calls[-1].detail == f"forced from {ship}"


async def test_protection_and_health_reach_the_group(world: World) -> None:
    ship = world.instances[0]

    def described() -> dict[str, Any]:
        answer = world.autoscaling.describe_auto_scaling_instances(InstanceIds=[ship])
        return answer["AutoScalingInstances"][0]

    await world.cloud.set_protected(ship, True)
    assert described()["ProtectedFromScaleIn"] is True
    await world.cloud.set_protected(ship, False)
    assert described()["ProtectedFromScaleIn"] is False
    await world.cloud.mark_unhealthy(ship, "container init failed: exit 3")
    assert described()["HealthStatus"].lower() == "unhealthy"
    assert world.cloud.calls[-1].detail == "container init failed: exit 3"


async def test_counts_are_published_per_state(world: World) -> None:
    await world.cloud.publish_counts({"available": 3, "running": 5, "failed": 1})
    metrics = world.cloudwatch.list_metrics(Namespace="campfleet", MetricName="Ships")["Metrics"]
    dims = sorted(tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])) for m in metrics)
    assert dims == [(("Stack", STACK), ("State", s)) for s in ("available", "failed", "running")]
    assert samples(world, "running", "Maximum") == [5.0]


def samples(w: World, state: str, statistic: str) -> list[float]:
    now = dt.datetime.now(dt.timezone.utc)
    stats = w.cloudwatch.get_metric_statistics(
        Namespace="campfleet",
        MetricName="Ships",
        Dimensions=[{"Name": "Stack", "Value": STACK}, {"Name": "State", "Value": state}],
        StartTime=now - dt.timedelta(minutes=5),
        EndTime=now + dt.timedelta(minutes=5),
        Period=600,
        Statistics=[statistic],
    )
    return [p[statistic] for p in stats["Datapoints"]]


async def test_aws_errors_become_one_line_with_id_and_code(world: World) -> None:
    with pytest.raises(CloudError) as err:
        await world.cloud.attach_volume("vol-0123456789abcdef0", world.instances[0])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("describe volume failed on vol-0123456789abcdef0: ")
    assert "InvalidVolume.NotFound" in message
    assert world.cloud.calls[-1].ok is False

    with pytest.raises(CloudError, match=r"^mark unhealthy failed on i-0123456789abcdef0: "):
        await world.cloud.mark_unhealthy("i-0123456789abcdef0", "lost")


async def test_a_transient_aws_failure_is_retried(world: World) -> None:
    """moto never fails transiently, so one 503 is injected at the HTTP layer, below retries."""
    cloud = AwsCloud(REGION, STACK, GROUP, max_attempts=3)
    sent: list[int] = []

    def unavailable_once(request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
        sent.append(1)
        return AWSResponse(request.url, 503, {}, _Raw(b"")) if len(sent) == 1 else None

    cloud._cloudwatch.meta.events.register_first("before-send.cloudwatch", unavailable_once)
    await cloud.publish_counts({"running": 1})
    assert len(sent) == 2  # the 503, then the retry that succeeded

    cloud = AwsCloud(REGION, STACK, GROUP, max_attempts=2)
    cloud._cloudwatch.meta.events.register_first(
        "before-send.cloudwatch",
        lambda request, **_: AWSResponse(request.url, 503, {}, _Raw(b"")),
    )
    with pytest.raises(CloudError, match=r"^publish metrics failed on campfleet: "):
        await cloud.publish_counts({"running": 1})


class _Raw:
    """The raw body botocore reads from an HTTP response."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


async def test_local_cloud_uses_directories_and_records_calls(tmp_path: Any) -> None:
    cloud = LocalCloud(tmp_path, 3, zones=("local-a", "local-b"))
    assert await cloud.list_volumes() == [
        ("vol-local-0001", "local-a"),
        ("vol-local-0002", "local-b"),
        ("vol-local-0003", "local-a"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "vol-local-0001",
        "vol-local-0002",
        "vol-local-0003",
    ]
    assert await cloud.attach_volume("vol-local-0002", "ship-1") == str(tmp_path / "vol-local-0002")
    await cloud.attach_volume("vol-local-0002", "ship-2")
    await cloud.set_protected("ship-2", True)
    await cloud.mark_unhealthy("ship-1", "lost: no report for 15 s")
    await cloud.publish_counts({"running": 1})
    await cloud.detach_volume("vol-local-0002", "ship-1")  # not there any more: no-op
    assert cloud.attachments == {"vol-local-0002": "ship-2"}
    assert cloud.protected == {"ship-2"}
    assert cloud.unhealthy == {"ship-1": "lost: no report for 15 s"}
    assert cloud.published == {"running": 1}
    assert [(c.action, c.target, c.detail) for c in cloud.calls] == [
        ("attach", "vol-local-0002", "to ship-1"),
        ("attach", "vol-local-0002", "to ship-2 (moved from ship-1)"),
        ("protect", "ship-2", ""),
        ("unhealthy", "ship-1", "lost: no report for 15 s"),
    ]
    with pytest.raises(CloudError, match=r"^attach failed on vol-nope: no such local volume$"):
        await cloud.attach_volume("vol-nope", "ship-1")
