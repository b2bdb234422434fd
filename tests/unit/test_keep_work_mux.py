"""Issue 13, mux side: a false `lost`, a lost state directory and a blank read lose no files.

Each test performs the accident: a silent-but-running ship whose volume another start wants
(against moto), a mux starting on an empty registry while the volumes' owner tags say who owns
what, and a volume seen mounted that reads blank.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws

from campfleet.contracts import secrets as contract
from campfleet.contracts.muxjson import mux_json
from campfleet.mux import hubconfig
from campfleet.mux.cloud import AwsCloud, LocalCloud, VolumeBusy, detach_refusal
from campfleet.mux.fleet import Fleet, VolumesRefused
from campfleet.mux.registry import Registry
from campfleet.mux.settings import parse
from campfleet.protocol import Report, ShipState
from tests.unit import test_cloud
from tests.unit.test_cloud import GROUP
from tests.unit.test_cloud import attachments as attachments_of
from tests.unit.test_spawner import NoControl

REGION = "us-east-1"
AMI = "ami-12c6146b"


def aws_mux_json() -> dict[str, Any]:
    """An AWS mux's settings (no `local` block: state on the mounted state volume), from the
    same builder the Pulumi program uses."""
    return mux_json(
        stack="ev", event="ev", region=REGION, ships=2, ready_percent=50, admin_users=[],
        control_port=8700, ship_image="ship:1", heartbeat=5.0, lost_after=3,
        parameters={s.key: contract.parameter_name("ev", s) for s in contract.GENERATED},
    )  # fmt: skip


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def instance(ec2: Any) -> str:
    return ec2.run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": f"{REGION}a"}
    )["Instances"][0]["InstanceId"]


def home_volume(ec2: Any, owner: str | None = None) -> str:
    tags = [
        {"Key": "campfleet:stack", "Value": "ev"},
        {"Key": "campfleet:role", "Value": "home"},
    ]
    if owner:
        tags.append({"Key": "campfleet:owner", "Value": owner})
    return ec2.create_volume(
        AvailabilityZone=f"{REGION}a",
        Size=10,
        TagSpecifications=[{"ResourceType": "volume", "Tags": tags}],
    )["VolumeId"]


def report(registry: Registry, ship: str, seq: int, volume: str | None, **kw: Any) -> None:
    registry.apply_report(
        Report(
            ship,
            f"{REGION}a",
            "10.0.1.5",
            8888,
            kw.pop("state", ShipState.AVAILABLE),
            volume=volume,
            seq=seq,
            ts=0,
        ),
        **kw,
    )


def attached_to(ec2: Any, volume: str) -> list[str]:
    [v] = ec2.describe_volumes(VolumeIds=[volume])["Volumes"]
    return [a["InstanceId"] for a in v["Attachments"]]


async def test_a_false_lost_never_detaches_a_mounted_volume(ec2: Any, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    cloud = AwsCloud(REGION, "ev", "group", poll_interval=0.01, detach_timeout=0.2)
    cloud.mount_status = registry.mount_status
    old, new = instance(ec2), instance(ec2)
    volume = home_volume(ec2)
    await cloud.attach_volume(volume, old)
    report(registry, old, 1, None, state=ShipState.BOOTING)
    report(registry, old, 2, volume)  # the agent mounted it
    assert registry.mark_lost(now=time.time() + 16, timeout=15) == [old]  # silent 16 s: "lost"

    # The attendee restarts and gets a new ship: their volume must not be pulled off the old
    # one, which is running and may still be writing.
    with pytest.raises(VolumeBusy, match=r"still attached to ship .*reported it mounted"):
        await cloud.attach_volume(volume, new)
    assert attached_to(ec2, volume) == [old]
    assert cloud.calls[-1].action == "detach" and not cloud.calls[-1].ok

    # Once EC2 says the old ship is stopped (or gone), the volume moves.
    ec2.stop_instances(InstanceIds=[old])
    await cloud.attach_volume(volume, new)
    assert attached_to(ec2, volume) == [new]
    registry.close()


async def test_a_volume_silent_longer_than_the_grace_moves(ec2: Any, tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    cloud = AwsCloud(REGION, "ev", "group", poll_interval=0.01, detach_timeout=0.2)
    cloud.mount_status = registry.mount_status
    cloud.mounted_grace = 60.0
    old, new = instance(ec2), instance(ec2)
    volume = home_volume(ec2)
    await cloud.attach_volume(volume, old)
    registry.apply_report(
        Report(old, f"{REGION}a", "10.0.1.5", 8888, ShipState.BOOTING, volume=volume, seq=1),
        now=time.time() - 61,  # last heard 61 s ago, the grace is 60 s
    )
    await cloud.attach_volume(volume, new)
    assert attached_to(ec2, volume) == [new]
    # A ship never heard of (a mux with empty state) is not "long ago": refused while running.
    unknown, other = instance(ec2), home_volume(ec2)
    await cloud.attach_volume(other, unknown)
    with pytest.raises(VolumeBusy, match="has not reported to this mux"):
        await cloud.attach_volume(other, new)
    assert attached_to(ec2, other) == [unknown]
    registry.close()


@pytest.mark.parametrize(
    ("state", "mounted", "age", "allowed"),
    [
        (None, True, 1, True),  # EC2 no longer knows the instance
        ("terminated", True, 1, True),
        ("stopped", True, 1, True),
        ("running", False, 1, True),  # the agent reported it unmounted
        ("running", True, 1, False),  # a false `lost`: mounted 1 s ago
        ("stopping", True, 1, False),
        ("shutting-down", True, 1, False),
        ("running", True, 1800, True),  # silent for the whole grace
        ("running", None, None, False),  # never reported to this mux
    ],
)
def test_detach_refusal(state: str | None, mounted: bool | None, age: Any, allowed: bool) -> None:
    now = 10_000.0
    at = None if age is None else now - age
    assert (detach_refusal(state, mounted, at, now, 1800.0) == "") is allowed


def test_a_volume_seen_mounted_is_never_formattable_again(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    registry.add_volumes([("vol-1", "z")])
    report(registry, "i-a", 1, None, state=ShipState.BOOTING)
    volume = registry.volume_for("alice").volume_id
    registry.set_volume("i-a", volume)
    assert registry.desired("i-a").may_format is True  # never seen mounted: blank = new
    report(registry, "i-a", 2, volume)
    assert registry.desired("i-a").may_format is False
    registry.release("i-a")
    report(registry, "i-b", 1, None, state=ShipState.BOOTING)
    registry.set_volume("i-b", volume)
    assert registry.desired("i-b").may_format is False  # her files: a blank read is an error
    registry.close()
    again = Registry(tmp_path / "r.sqlite")
    assert again.desired("i-b").may_format is False and again.ever_mounted(volume)
    again.close()


world = test_cloud.world  # moto: EC2, an Auto Scaling group and this stack's home volumes


class Control(NoControl):
    rejections: dict[str, int] = {}


def local_fleet(tmp_path: Path, registry: Registry, refusal: str = "") -> Fleet:
    return Fleet(
        registry,
        LocalCloud(tmp_path / "volumes", 3),
        Control(),
        expected=3,
        ready_percent=50,
        ship_image="ship:1",
        state_file=tmp_path / "fleet.json",
        refusal=refusal,
    )


async def test_a_mux_on_empty_state_gives_each_attendee_their_own_volume(tmp_path: Path) -> None:
    first = Registry(tmp_path / "state1" / "r.sqlite")
    fleet = local_fleet(tmp_path, first)
    await fleet.start()
    alice = await fleet.assign_volume("alice")
    await fleet.assign_volume("carol")
    assert await fleet.cloud.volume_owners() == {
        alice.volume_id: "alice",
        "vol-local-0002": "carol",
    }
    fleet.stop()
    first.close()

    # The state volume did not come back: the mux starts on an empty directory.
    empty = Registry(tmp_path / "state2" / "r.sqlite")
    again = local_fleet(tmp_path, empty)
    await again.start()
    bob = await again.assign_volume("bob")  # a new attendee gets a free volume, not alice's
    assert bob.volume_id not in (alice.volume_id, "vol-local-0002")
    assert (await again.assign_volume("alice")).volume_id == alice.volume_id
    again.stop()
    empty.close()


async def test_refused_fleet_hands_out_nothing_and_says_why(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "r.sqlite")
    fleet = local_fleet(tmp_path, registry, refusal="the mux state volume is not mounted")
    await fleet.start()
    with pytest.raises(VolumesRefused, match="state volume is not mounted"):
        await fleet.assign_volume("alice")
    assert registry.volumes()[0].owner is None
    from campfleet.mux.fleetview import snapshot
    from campfleet.mux.redeploy import Redeployer

    page = snapshot(fleet, Redeployer(fleet))
    assert page["volumesRefused"] == "the mux state volume is not mounted"
    fleet.stop()
    registry.close()


# /proc/self/mountinfo inside the mux container: the state directory bind-mounted from the
# host, once from the mounted state volume (root "/") and once from an empty host directory.
MOUNTED = (
    "600 500 0:52 / / rw,relatime - overlay overlay rw\n"
    "610 600 259:3 / /var/lib/campfleet rw,relatime - ext4 /dev/nvme1n1 rw\n"
)
NOT_MOUNTED = (
    "600 500 0:52 / / rw,relatime - overlay overlay rw\n"
    "610 600 259:1 /var/lib/campfleet /var/lib/campfleet rw,relatime - xfs /dev/nvme0n1p1 rw\n"
)


def test_state_refusal_on_aws_when_the_state_volume_is_not_mounted(tmp_path: Path) -> None:
    settings = parse(aws_mux_json(), private_ip="10.0.0.10")
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTED)
    assert hubconfig.state_refusal(settings, info) == ""
    info.write_text(NOT_MOUNTED)  # a bind mount of the host's empty directory
    assert "not mounted at /var/lib/campfleet" in hubconfig.state_refusal(settings, info)
    info.write_text(MOUNTED.splitlines()[0] + "\n")  # no mount there at all
    assert hubconfig.state_refusal(settings, info)
    assert hubconfig.state_refusal(settings, tmp_path / "missing")  # cannot tell: refuse


async def test_aws_owner_tags_round_trip(ec2: Any) -> None:
    cloud = AwsCloud(REGION, "ev", "group")
    volume, tagged = home_volume(ec2), home_volume(ec2, owner="ann")
    await cloud.tag_owner(volume, "bob")
    assert await cloud.volume_owners() == {volume: "bob", tagged: "ann"}


async def test_a_restored_stack_gives_each_attendee_their_own_volume(
    ec2: Any, tmp_path: Path
) -> None:
    """Restored volumes carry their owner tags from creation; the new mux binds them."""
    mine, theirs = home_volume(ec2, owner="ann"), home_volume(ec2, owner="bob")
    blank = home_volume(ec2)
    registry = Registry(tmp_path / "r.sqlite")
    fleet = Fleet(
        registry,
        AwsCloud(REGION, "ev", "group"),
        Control(),
        expected=3,
        ready_percent=50,
        ship_image="ship:1",
        state_file=tmp_path / "fleet.json",
    )
    await fleet.start()
    assert (await fleet.assign_volume("newcomer")).volume_id == blank
    assert (await fleet.assign_volume("bob")).volume_id == theirs
    assert (await fleet.assign_volume("ann")).volume_id == mine
    assert await fleet.cloud.volume_owners() == {mine: "ann", theirs: "bob", blank: "newcomer"}
    fleet.stop()
    registry.close()


async def test_fleet_page_says_why_no_volume_is_handed_out(tmp_path: Path) -> None:
    import asyncio

    from tests.unit.test_fleetview import login, running_hub

    async with running_hub(tmp_path) as hub:
        admin = await asyncio.to_thread(login, hub, "organizer")
        page = await asyncio.to_thread(admin.get, f"{hub.url}/hub/fleet", timeout=10)
        assert 'id="volumes-refused"' not in page.text
        hub.fleet.refusal = "the mux state volume is not mounted at /var/lib/campfleet"
        page = await asyncio.to_thread(admin.get, f"{hub.url}/hub/fleet", timeout=10)
        assert 'id="volumes-refused"' in page.text
        assert (
            "No home volume is being handed out: the mux state volume is not mounted" in page.text
        )


def test_mounted_grace_is_configurable_and_checked(tmp_path: Path) -> None:
    from campfleet.mux.settings import SettingsError

    data = aws_mux_json()
    assert parse(data, private_ip="10.0.0.10").mounted_grace == 1800.0
    longer = parse({**data, "mountedGraceSeconds": 7200}, private_ip="10.0.0.10")
    assert longer.mounted_grace == 7200.0
    with pytest.raises(SettingsError, match="'mountedGraceSeconds' must be a number of seconds"):
        parse({**data, "mountedGraceSeconds": 5}, private_ip="10.0.0.10")


async def test_status_names_the_refusal(tmp_path: Path) -> None:
    from tests.unit.test_cli_status import campfleet
    from tests.unit.test_fleetview import running_hub

    async with running_hub(tmp_path) as hub:
        hub.fleet.refusal = "the mux state volume is not mounted at /var/lib/campfleet"
        code, out, err = await campfleet(
            "status", "--url", hub.url, CAMPFLEET_TOKEN=hub.admin_token
        )
    assert code == 0, err
    assert out.splitlines()[2] == (
        "HOME VOLUMES REFUSED: the mux state volume is not mounted at /var/lib/campfleet"
    )


# --- the whole accident through the spawner: a ship goes `lost` while its volume is mounted --


async def test_a_restart_after_a_false_lost_never_pulls_the_volume_off(
    world: Any, tmp_path: Path
) -> None:
    """alice's ship goes silent (marked lost) but EC2 still runs it; her restart gets a new
    ship, and her volume stays where it is mounted until that ship is stopped."""
    from tests.unit.test_spawner import FakeAgents, make_spawner

    world.autoscaling.update_auto_scaling_group(
        AutoScalingGroupName=GROUP, DesiredCapacity=4, MaxSize=4
    )
    group = world.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])
    instances = [i["InstanceId"] for i in group["AutoScalingGroups"][0]["Instances"]]
    zone_of = {
        i["InstanceId"]: i["Placement"]["AvailabilityZone"]
        for r in world.ec2.describe_instances(InstanceIds=instances)["Reservations"]
        for i in r["Instances"]
    }

    class Agents(FakeAgents):
        def report(self, ship_id, state, containers=(), generation=0, volume=None):  # type: ignore[override]
            self.registry.apply_report(
                Report(
                    ship_id,
                    zone_of[ship_id],
                    "10.0.1.5",
                    8888,
                    state,
                    list(containers),
                    volume,
                    generation=generation,
                    seq=next(self.seq),
                    ts=0.0,
                )
            )

    registry = Registry(tmp_path / "r.sqlite")
    fleet = Fleet(
        registry,
        world.cloud,
        Control(),
        expected=4,
        ready_percent=50,
        ship_image="ship:1",
        state_file=tmp_path / "fleet.json",
    ).install()
    await fleet.start()
    agents = Agents(registry)
    for ship in instances:
        agents.report(ship, ShipState.BOOTING)
        agents.report(ship, ShipState.AVAILABLE)

    first = make_spawner("alice")
    await asyncio.wait_for(first.start(), 10)
    old, volume = first.ship_id, first.volume_id
    assert registry.get(old).mounted_volume == volume  # her agent mounted it
    agents.dead.add(old)  # silent from now on (a network blip), still running in EC2
    await asyncio.sleep(0.5)
    for ship in instances:
        if ship != old:
            agents.report(ship, registry.get(ship).state)  # the others keep reporting
    assert registry.mark_lost(timeout=0.4) == [old]  # a false `lost`

    again = make_spawner("alice")
    with pytest.raises(VolumeBusy, match=f"still attached to ship {old}"):
        await asyncio.wait_for(again.start(), 10)
    [(attached, _device, state)] = attachments_of(world, volume)
    assert (attached, state) == (old, "attached")  # never pulled off the running ship

    world.ec2.stop_instances(InstanceIds=[old])  # EC2 confirms it can no longer write
    third = make_spawner("alice")
    await asyncio.wait_for(third.start(), 10)
    assert third.ship_id != old and third.volume_id == volume
    assert [a[0] for a in attachments_of(world, volume)] == [third.ship_id]
    fleet.stop()
    registry.close()
