"""AwsCloud against moto's EC2/Auto Scaling/CloudWatch; LocalCloud against a temp directory.

moto covers everything AwsCloud calls. Two things moto cannot do are simulated, and say so:
a detach that never completes (a dead ship) and a transient AWS failure (HTTP 503). No test
needs botocore's Stubber: it answers above the retry layer, so it could not show retries.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.stub import Stubber
from moto import mock_aws

from campfleet.mux import cloudwatch
from campfleet.mux.cloud import AwsCloud, CloudError, LocalCloud
from campfleet.mux.control import ControlServer
from campfleet.mux.fleet import Fleet
from campfleet.mux.metrics import DownShip, FleetSample
from campfleet.mux.registry import Registry
from campfleet.protocol import ShipState
from tests.unit.test_metrics import report_at
from tests.unit.test_redeploy import FakeAgents

REGION = "us-east-1"
STACK = "dev"
GROUP = "campfleet-dev-ships"
SAMPLE = FleetSample(
    expected=1, counts={"running": 1}, live=1, ready=1, needed=1, gate_open=True, down=()
)
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


async def test_the_fleet_publishes_lost_and_failed_ships_with_their_ids(
    world: World, tmp_path: Path
) -> None:
    """The hub's own publisher loop, on a fleet of 4 with one ship lost and one failed."""
    registry = Registry(tmp_path / "registry.sqlite")
    fleet = Fleet(
        registry,
        world.cloud,
        ControlServer(registry, b"fleet-secret"),
        expected=4,
        ready_percent=100,
        ship_image="ship:1",
        state_file=tmp_path / "fleet.json",
    )
    lost, failed = world.instances
    agents = FakeAgents(registry)
    for ship in (lost, failed, "i-healthy1", "i-healthy2"):
        agents.report(ship, ShipState.BOOTING)
        agents.report(ship, ShipState.AVAILABLE)
    agents.report(failed, ShipState.FAILED, error="container init failed: exit 3")
    report_at(fleet, agents, lost, time.time() - 100)  # then silent
    assert registry.mark_lost(timeout=50) == [lost]

    publisher = asyncio.ensure_future(fleet._publish_metrics())
    try:
        for _ in range(200):
            if "publish metrics" in {c.action for c in world.cloud.calls}:
                break
            await asyncio.sleep(0.05)
    finally:
        publisher.cancel()
    # Both broken ships were also handed to the Auto Scaling group for replacement.
    health = {
        i["InstanceId"]: i["HealthStatus"].lower()
        for i in world.autoscaling.describe_auto_scaling_instances(InstanceIds=[lost, failed])[
            "AutoScalingInstances"
        ]
    }
    assert health == {lost: "unhealthy", failed: "unhealthy"}

    assert stat(world, cloudwatch.SHIPS_DOWN) == 2.0
    assert stat(world, cloudwatch.SHIPS, State="lost") == 1.0
    assert stat(world, cloudwatch.SHIPS, State="failed") == 1.0
    assert stat(world, cloudwatch.SHIPS, State="available") == 2.0
    assert stat(world, cloudwatch.SHIPS, State="running") == 0.0  # zeros are sent too
    assert stat(world, cloudwatch.SHIPS_READY) == 2.0
    assert stat(world, cloudwatch.GATE_OPEN) == 1.0  # latched open when all 4 were available
    listed = world.cloudwatch.list_metrics(Namespace="campfleet", MetricName=cloudwatch.SHIP_DOWN)
    ids = sorted(
        tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])) for m in listed["Metrics"]
    )
    assert ids == sorted(
        [
            (("InstanceId", lost), ("Stack", STACK), ("State", "lost")),
            (("InstanceId", failed), ("Stack", STACK), ("State", "failed")),
        ]
    )
    assert stat(world, cloudwatch.SHIP_DOWN, InstanceId=lost, State="lost") == 1.0


def stat(w: World, metric: str, **dims: str) -> float:
    """The one Maximum CloudWatch holds for a metric of this stack in the last minutes."""
    now = dt.datetime.now(dt.UTC)
    answer = w.cloudwatch.get_metric_statistics(
        Namespace="campfleet",
        MetricName=metric,
        Dimensions=[{"Name": "Stack", "Value": STACK}]
        + [{"Name": k, "Value": v} for k, v in dims.items()],
        StartTime=now - dt.timedelta(minutes=5),
        EndTime=now + dt.timedelta(minutes=5),
        Period=600,
        Statistics=["Maximum"],
    )
    (point,) = answer["Datapoints"]
    return point["Maximum"]


def test_a_large_fleet_is_sent_in_calls_of_at_most_1000_metrics() -> None:
    down = tuple(DownShip(f"i-{n:05d}", "a", "lost", "silent") for n in range(1500))
    sample = FleetSample(
        expected=3000, counts={"lost": 1500}, live=1500, ready=1500, needed=2700,
        gate_open=True, down=down,
    )  # fmt: skip
    data = cloudwatch.metric_data(STACK, sample)
    assert len(data) == 1 + 3 + 1500
    assert [len(b) for b in cloudwatch.batches(data)] == [1000, 504]


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
    await cloud.publish_metrics(SAMPLE)
    assert len(sent) == 2  # the 503, then the retry that succeeded

    cloud = AwsCloud(REGION, STACK, GROUP, max_attempts=2)
    cloud._cloudwatch.meta.events.register_first(
        "before-send.cloudwatch",
        lambda request, **_: AWSResponse(request.url, 503, {}, _Raw(b"")),
    )
    with pytest.raises(CloudError, match=r"^publish metrics failed on campfleet: "):
        await cloud.publish_metrics(SAMPLE)


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
    await cloud.publish_metrics(SAMPLE)
    await cloud.detach_volume("vol-local-0002", "ship-1")  # not there any more: no-op
    assert cloud.attachments == {"vol-local-0002": "ship-2"}
    assert cloud.protected == {"ship-2"}
    assert cloud.unhealthy == {"ship-1": "lost: no report for 15 s"}
    assert cloud.published is SAMPLE
    assert [(c.action, c.target, c.detail) for c in cloud.calls] == [
        ("attach", "vol-local-0002", "to ship-1"),
        ("attach", "vol-local-0002", "to ship-2 (moved from ship-1)"),
        ("protect", "ship-2", ""),
        ("unhealthy", "ship-1", "lost: no report for 15 s"),
    ]
    with pytest.raises(CloudError, match=r"^attach failed on vol-nope: no such local volume$"):
        await cloud.attach_volume("vol-nope", "ship-1")


async def test_demand_scaling_reaches_the_group(world: World) -> None:
    """Demand mode: the desired capacity moves and exactly the chosen ship goes."""

    def group() -> dict[str, Any]:
        answer = world.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])
        return answer["AutoScalingGroups"][0]

    await world.cloud.set_desired_capacity(4)
    assert group()["DesiredCapacity"] == 4
    members = [i["InstanceId"] for i in group()["Instances"]]
    assert len(members) == 4  # the group launched the difference
    held, chosen = members[0], members[3]
    await world.cloud.set_protected(held, True)
    await world.cloud.set_protected(chosen, True)  # lifted by remove_ship, as it must be
    await world.cloud.remove_ship(chosen)
    after = group()
    assert after["DesiredCapacity"] == 3
    remaining = {i["InstanceId"]: i for i in after["Instances"]}
    assert chosen not in remaining and held in remaining
    assert remaining[held]["ProtectedFromScaleIn"] is True
    assert [c.action for c in world.cloud.calls[-2:]] == ["unprotect", "remove"]


async def test_scaling_errors_are_one_line(world: World) -> None:
    # moto accepts any size (and crashes on an unknown group): AWS's answer via Stubber.
    above = "New SetDesiredCapacity value 99 is above max value 4 for the AutoScalingGroup."
    with Stubber(world.cloud._autoscaling) as stub:
        stub.add_client_error("set_desired_capacity", "ValidationError", above)
        with pytest.raises(CloudError) as e:
            await world.cloud.set_desired_capacity(99)
    assert str(e.value) == f"set desired capacity failed on {GROUP}: ValidationError: {above}"
    unknown = "Instance Id not found - No managed instance found for instance ID i-0000000000"
    with Stubber(world.cloud._autoscaling) as stub:
        stub.add_response("set_instance_protection", {})
        stub.add_client_error(
            "terminate_instance_in_auto_scaling_group", "ValidationError", unknown
        )
        with pytest.raises(CloudError) as e:
            await world.cloud.remove_ship("i-0000000000")
    assert str(e.value) == f"remove failed on i-0000000000: ValidationError: {unknown}"


async def test_local_cloud_writes_the_group_file(tmp_path: Any) -> None:
    group = tmp_path / "group.json"
    cloud = LocalCloud(tmp_path / "volumes", 2, group_file=group)
    with pytest.raises(CloudError, match="no desired capacity set yet"):
        await cloud.remove_ship("i-local0001")
    await cloud.set_desired_capacity(3)
    assert json.loads(group.read_text()) == {"desired": 3, "remove": []}
    await cloud.remove_ship("i-local0002")
    assert json.loads(group.read_text()) == {"desired": 2, "remove": ["i-local0002"]}
    assert [(c.action, c.target) for c in cloud.calls] == [
        ("desired capacity", "3"),
        ("remove", "i-local0002"),
    ]


async def test_local_owner_tags_are_one_appended_line_each_and_the_last_wins(
    tmp_path: Any,
) -> None:
    """Tagging appends (no rewrite of every tag per start); a torn line costs only itself."""
    cloud = LocalCloud(tmp_path, 3)
    await cloud.tag_owner("vol-local-0001", "ann")
    await cloud.tag_owner("vol-local-0002", "bob")
    journal = tmp_path / "owner-tags.jsonl"
    before = journal.read_bytes()
    await cloud.tag_owner("vol-local-0001", "cy")  # re-tagged (an admin re-assignment)
    assert journal.read_bytes().startswith(before)  # appended, earlier tags untouched
    assert await cloud.volume_owners() == {"vol-local-0001": "cy", "vol-local-0002": "bob"}
    with open(journal, "ab") as f:
        f.write(b'{"volume": "vol-local-0003", "own')  # a crash mid-write
    await cloud.tag_owner("vol-local-0003", "dee")
    again = LocalCloud(tmp_path, 3)  # a restarted mux reads the same tags
    assert await again.volume_owners() == {
        "vol-local-0001": "cy",
        "vol-local-0002": "bob",
        "vol-local-0003": "dee",
    }


async def test_local_owner_tag_that_cannot_be_written_is_a_cloud_error(tmp_path: Any) -> None:
    cloud = LocalCloud(tmp_path, 1)
    (tmp_path / "owner-tags.jsonl").mkdir()  # not a file: the write fails
    with pytest.raises(CloudError, match="tag owner failed on vol-local-0001"):
        await cloud.tag_owner("vol-local-0001", "ann")
    with pytest.raises(CloudError, match="no such local volume"):
        await cloud.tag_owner("vol-nope", "ann")
