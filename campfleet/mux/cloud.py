"""The mux's only window onto the cloud: home volumes, scale-in protection, health, metrics.

The mux never launches instances itself (the Auto Scaling group does); it moves attendee
volumes, protects ships that carry an attendee, tells the group to replace a broken ship,
publishes fleet counts and, in demand mode, sets the group's desired capacity and removes the
free ships it chose. `AwsCloud` does that with boto3; `LocalCloud` does it with directories
and a group file a local event follows, so a local event and the tests run the same code.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from campfleet.mux import cloudwatch

if TYPE_CHECKING:
    from campfleet.mux.metrics import FleetSample
from campfleet.homevolumes import home_volume_filters
from campfleet.tags import OWNER_TAG

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Device names offered to home volumes, in order (the root volume uses /dev/xvda or /dev/sda1).
DEVICE_NAMES = tuple(f"/dev/sd{letter}" for letter in "fghijklmnop")
CALL_HISTORY = 200
# A volume the agent reported mounted less than this ago is never detached from a ship that
# still runs: a ship silent for a few heartbeats (`lost`) may still be writing to it.
MOUNTED_GRACE_SECONDS = 1800.0
# EC2 instance states in which nothing on the instance can write to a volume any more.
GONE_STATES = ("terminated", "stopped")

#: (mounted, when) from the registry: did the agent on `instance` last report `volume` mounted
#: (True), not mounted (False), or has that ship never reported (None, None)?
MountStatus = Callable[[str, str], "tuple[bool | None, float | None]"]


def _unknown_mount(volume_id: str, instance_id: str) -> tuple[bool | None, float | None]:
    return None, None


class CloudError(Exception):
    """A cloud call failed; the message is one line: what failed, on which id, AWS's code."""


class VolumeBusy(CloudError):
    """A home volume may still be in use on another ship; moving it now could lose files."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.jupyterhub_message = message  # shown on the attendee's spawn page


def detach_refusal(
    instance_state: str | None,
    mounted: bool | None,
    reported_at: float | None,
    now: float,
    grace: float,
) -> str:
    """Why a home volume must not be taken off `instance` now ("" = it may, forced if stuck).

    It may only when nothing there can still write to it: the instance is gone or stopped, or
    its agent reported the volume unmounted, or reported it mounted longer than `grace` ago.
    A ship marked `lost` after a few silent heartbeats is usually still running and writing.
    """
    if instance_state is None or instance_state in GONE_STATES or mounted is False:
        return ""
    if mounted is None:
        return "its agent has not reported to this mux"
    age = max(now - (reported_at or now), 0.0)
    return "" if age >= grace else f"its agent reported it mounted {age:.0f} s ago"


@dataclass(frozen=True)
class CloudCall:
    """One action the mux asked of the cloud, kept so the fleet view can show what happened."""

    ts: float
    action: str
    target: str
    detail: str = ""
    ok: bool = True


@dataclass(frozen=True)
class InstanceFacts:
    """What EC2 says about an instance that attests as a ship (campfleet.mux.attest)."""

    instance_id: str
    state: str  # EC2 state name: pending, running, stopping, stopped, ...
    group: str  # the Auto Scaling group that launched it ("" if none)
    private_ip: str


# The tag AWS puts on every instance an Auto Scaling group launches (users cannot set aws:*).
GROUP_TAG = "aws:autoscaling:groupName"
DESCRIBE_BATCH = 1000  # DescribeInstances takes up to 1,000 instance ids


class Cloud(abc.ABC):
    """What the mux needs from the cloud; every method is async and safe on the hub's loop."""

    def __init__(self) -> None:
        self._calls: deque[CloudCall] = deque(maxlen=CALL_HISTORY)
        # What the registry knows of a volume on a ship; the Fleet connects its registry here.
        self.mount_status: MountStatus = _unknown_mount
        self.mounted_grace = MOUNTED_GRACE_SECONDS

    @property
    def calls(self) -> list[CloudCall]:
        """The most recent cloud actions (oldest first), for the fleet view."""
        return list(self._calls)

    def _record(self, action: str, target: str, detail: str = "", ok: bool = True) -> None:
        self._calls.append(CloudCall(time.time(), action, target, detail, ok))

    @abc.abstractmethod
    async def attach_volume(self, volume_id: str, instance_id: str) -> str:
        """Attach a home volume to a ship (taking it off a dead ship first); return its device."""

    @abc.abstractmethod
    async def detach_volume(self, volume_id: str, instance_id: str) -> None:
        """Detach a home volume from a ship; a volume not attached there is left alone."""

    @abc.abstractmethod
    async def set_protected(self, instance_id: str, protected: bool) -> None:
        """Protect a ship that carries an attendee from scale-in (or lift the protection)."""

    @abc.abstractmethod
    async def mark_unhealthy(self, instance_id: str, reason: str) -> None:
        """Tell the group a ship is broken so it replaces it."""

    @abc.abstractmethod
    async def publish_metrics(self, sample: FleetSample) -> None:
        """Publish the fleet's numbers (campfleet.mux.cloudwatch) for alarms and dashboards."""

    @abc.abstractmethod
    async def list_volumes(self) -> list[tuple[str, str]]:
        """The stack's home volumes as (volume id, availability zone), sorted by id."""

    async def set_desired_capacity(self, capacity: int) -> None:
        """Demand mode: ask the group for this many ships (it launches the difference)."""
        raise CloudError(f"set desired capacity failed: {type(self).__name__} cannot scale")

    async def remove_ship(self, instance_id: str) -> None:
        """Demand mode: terminate this (free, ready) ship and lower the desired capacity by one,
        so the group removes exactly the ship the mux chose and launches no replacement."""
        raise CloudError(f"remove failed on {instance_id}: {type(self).__name__} cannot scale")

    @abc.abstractmethod
    async def tag_owner(self, volume_id: str, owner: str) -> None:
        """Record on the volume itself who owns it (the owner tag; see campfleet/tags.py)."""

    @abc.abstractmethod
    async def instances(self, instance_ids: list[str]) -> dict[str, InstanceFacts]:
        """What the cloud knows of these instances (an unknown id is left out)."""

    @abc.abstractmethod
    async def volume_owners(self) -> dict[str, str]:
        """{volume id: owner} from the home volumes' owner tags."""


class LocalCloud(Cloud):
    """Directories as volumes for a local event; the other actions are recorded and do nothing."""

    def __init__(
        self,
        volumes_root: Path | str,
        count: int,
        zones: tuple[str, ...] = ("local-a",),
        group_file: Path | str | None = None,
        instances_file: Path | str | None = None,
    ) -> None:
        super().__init__()
        # The local "EC2": {ship id: {"state", "group", "privateIp"}}, written by the local
        # event as it starts and stops ships; attesting ships are checked against it.
        self.instances_file = Path(instances_file) if instances_file else None
        # The local "Auto Scaling group": {"desired": n, "remove": [ship ids]}, which
        # LocalEvent.follow_group starts and stops local ships to match.
        self.group_file = Path(group_file) if group_file else None
        self.desired: int | None = None
        self.removed: list[str] = []
        if count < 0:
            raise ValueError(f"volume count must be >= 0, got {count}")
        if not zones:
            raise ValueError("LocalCloud needs at least one zone")
        self.volumes_root = Path(volumes_root)
        self._volumes = [
            (f"vol-local-{i:04d}", zones[(i - 1) % len(zones)]) for i in range(1, count + 1)
        ]
        self.attachments: dict[str, str] = {}
        self.protected: set[str] = set()
        self.unhealthy: dict[str, str] = {}
        self.published: Optional[FleetSample] = None
        for volume_id, _zone in self._volumes:
            (self.volumes_root / volume_id).mkdir(parents=True, exist_ok=True)
        # The owner tags: a file beside the volumes, so they outlive the mux's state directory.
        # An append-only journal (one {"volume": id, "owner": name} line per tag, the last
        # line for a volume wins), so tagging one volume is one appended line: rewriting the
        # whole map per tag was O(volumes) per start on the hub's event loop, 5% of the hub's
        # time in a storm of 1,000 (docs/scale.md).
        self._owners_file = self.volumes_root / "owner-tags.jsonl"

    def _path(self, volume_id: str) -> Path:
        if volume_id not in dict(self._volumes):
            self._record("attach", volume_id, "unknown volume", ok=False)
            raise CloudError(f"attach failed on {volume_id}: no such local volume")
        return self.volumes_root / volume_id

    async def attach_volume(self, volume_id: str, instance_id: str) -> str:
        path = self._path(volume_id)
        previous = self.attachments.get(volume_id)
        self.attachments[volume_id] = instance_id
        moved = f" (moved from {previous})" if previous and previous != instance_id else ""
        self._record("attach", volume_id, f"to {instance_id}{moved}")
        return str(path)

    async def detach_volume(self, volume_id: str, instance_id: str) -> None:
        if self.attachments.get(volume_id) == instance_id:
            del self.attachments[volume_id]
            self._record("detach", volume_id, f"from {instance_id}")

    async def set_protected(self, instance_id: str, protected: bool) -> None:
        (self.protected.add if protected else self.protected.discard)(instance_id)
        self._record("protect" if protected else "unprotect", instance_id)

    async def mark_unhealthy(self, instance_id: str, reason: str) -> None:
        self.unhealthy[instance_id] = reason
        self._record("unhealthy", instance_id, reason)

    async def publish_metrics(self, sample: FleetSample) -> None:
        self.published = sample  # a local event has no CloudWatch: kept for the tests

    async def list_volumes(self) -> list[tuple[str, str]]:
        return list(self._volumes)

    def _write_group(self) -> None:
        if self.group_file is None:
            return
        tmp = self.group_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"desired": self.desired, "remove": self.removed}))
        tmp.replace(self.group_file)

    async def set_desired_capacity(self, capacity: int) -> None:
        self.desired = capacity
        self._write_group()
        self._record("desired capacity", str(capacity))

    async def remove_ship(self, instance_id: str) -> None:
        if self.desired is None:
            raise CloudError(f"remove failed on {instance_id}: no desired capacity set yet")
        self.desired -= 1
        self.removed.append(instance_id)
        self._write_group()
        self._record("remove", instance_id, f"desired now {self.desired}")

    async def tag_owner(self, volume_id: str, owner: str) -> None:
        self._path(volume_id)
        line = json.dumps({"volume": volume_id, "owner": owner}).encode() + b"\n"
        try:
            with open(self._owners_file, "a+b") as journal:
                if journal.tell():  # after a line torn by a crash, start on a line of its own
                    journal.seek(-1, 2)
                    if journal.read(1) != b"\n":
                        line = b"\n" + line
                journal.write(line)  # "a": always at the end
        except OSError as e:
            self._record("tag owner", volume_id, str(e), ok=False)
            raise CloudError(f"tag owner failed on {volume_id}: {e}") from e
        self._record("tag owner", volume_id, owner)

    async def instances(self, instance_ids: list[str]) -> dict[str, InstanceFacts]:
        try:
            known = json.loads(self.instances_file.read_text()) if self.instances_file else {}
        except (FileNotFoundError, ValueError):
            known = {}
        found = {}
        for instance_id in instance_ids:
            entry = known.get(instance_id) if isinstance(known, dict) else None
            if isinstance(entry, dict):
                found[instance_id] = InstanceFacts(
                    instance_id,
                    str(entry.get("state", "")),
                    str(entry.get("group", "")),
                    str(entry.get("privateIp", "")),
                )
        return found

    async def volume_owners(self) -> dict[str, str]:
        try:
            lines = self._owners_file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return {}
        owners: dict[str, str] = {}
        for line in lines:
            try:
                tag = json.loads(line)
                owners[str(tag["volume"])] = str(tag["owner"])
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash mid-write: that tag was never confirmed
        return owners


class AwsCloud(Cloud):
    """EC2 volumes, Auto Scaling protection/health and CloudWatch metrics via boto3.

    boto3 is synchronous, so every call runs in a worker thread: a slow AWS answer must
    never stall the hub's event loop that serves every attendee.
    """

    def __init__(
        self,
        region: str,
        stack: str,
        group_name: str,
        namespace: str = cloudwatch.NAMESPACE,
        *,
        max_attempts: int = 8,
        detach_timeout: float = 60.0,
        attach_timeout: float = 120.0,
        poll_interval: float = 2.0,
        session: boto3.session.Session | None = None,
    ) -> None:
        super().__init__()
        self.region = region
        self.stack = stack
        self.group_name = group_name
        self.namespace = namespace
        self.detach_timeout = detach_timeout
        self.attach_timeout = attach_timeout
        self.poll_interval = poll_interval
        config = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=5,
            read_timeout=30,
        )
        session = session or boto3.session.Session(region_name=region)
        self._ec2 = session.client("ec2", region_name=region, config=config)
        self._autoscaling = session.client("autoscaling", region_name=region, config=config)
        self._cloudwatch = session.client("cloudwatch", region_name=region, config=config)
        # One attach at a time per ship, so two volumes never race for the same device name.
        self._instance_locks: dict[str, asyncio.Lock] = {}

    async def _call(self, action: str, target: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """Run one boto3 call in a thread; turn any AWS failure into a one-line CloudError."""
        try:
            return await asyncio.to_thread(fn, **kwargs)
        except botocore.exceptions.ClientError as e:
            err = e.response.get("Error", {})
            code = err.get("Code", "Unknown")
            message = err.get("Message", "")
            self._record(action, target, code, ok=False)
            raise CloudError(f"{action} failed on {target}: {code}: {message}".rstrip(": ")) from e
        except botocore.exceptions.BotoCoreError as e:
            self._record(action, target, type(e).__name__, ok=False)
            raise CloudError(f"{action} failed on {target}: {type(e).__name__}: {e}") from e

    async def _volume(self, volume_id: str) -> dict[str, Any]:
        answer = await self._call(
            "describe volume", volume_id, self._ec2.describe_volumes, VolumeIds=[volume_id]
        )
        return answer["Volumes"][0]

    async def _wait_volume(
        self, volume_id: str, done: Callable[[dict[str, Any]], bool], timeout: float
    ) -> bool:
        """Poll until `done(volume)` or the timeout: bounded, as AWS sometimes never finishes."""
        deadline = time.monotonic() + timeout
        while True:
            if done(await self._volume(volume_id)):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_interval)

    async def instances(self, instance_ids: list[str]) -> dict[str, InstanceFacts]:
        """DescribeInstances, up to 1,000 ids a call (a storm of attestations is batched by
        the caller); ids EC2 does not know are dropped one by one from the request."""
        found: dict[str, InstanceFacts] = {}
        pending = list(dict.fromkeys(instance_ids))
        while pending:
            batch, pending = pending[:DESCRIBE_BATCH], pending[DESCRIBE_BATCH:]
            try:
                pages = await self._call(
                    "describe instances",
                    f"{len(batch)} instances",
                    self._describe,
                    instance_ids=batch,
                )
            except CloudError as exc:
                unknown = [i for i in batch if i in str(exc)]
                if "InvalidInstanceID" not in str(exc) or not unknown:
                    raise
                pending = [i for i in batch if i not in unknown] + pending
                continue
            for instance in pages:
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                found[instance["InstanceId"]] = InstanceFacts(
                    instance["InstanceId"],
                    instance.get("State", {}).get("Name", ""),
                    tags.get(GROUP_TAG, ""),
                    instance.get("PrivateIpAddress", ""),
                )
        return found

    def _describe(self, instance_ids: list[str]) -> list[dict[str, Any]]:
        paginator = self._ec2.get_paginator("describe_instances")
        return [
            instance
            for page in paginator.paginate(InstanceIds=instance_ids)
            for reservation in page["Reservations"]
            for instance in reservation["Instances"]
        ]

    async def _free_device(self, instance_id: str) -> str:
        answer = await self._call(
            "describe instance",
            instance_id,
            self._ec2.describe_instances,
            InstanceIds=[instance_id],
        )
        instance = answer["Reservations"][0]["Instances"][0]
        used = {m["DeviceName"] for m in instance.get("BlockDeviceMappings", [])}
        for name in DEVICE_NAMES:
            if name not in used and name.replace("/dev/sd", "/dev/xvd") not in used:
                return name
        raise CloudError(
            f"attach failed on {instance_id}: no free device name (all of sdf-sdp used)"
        )

    async def attach_volume(self, volume_id: str, instance_id: str) -> str:
        lock = self._instance_locks.setdefault(instance_id, asyncio.Lock())
        async with lock:
            volume = await self._volume(volume_id)
            for att in volume.get("Attachments", []):
                if att["InstanceId"] == instance_id and att["State"] in ("attaching", "attached"):
                    await self._wait_attached(volume_id, instance_id)
                    return att["Device"]
                if att["State"] in ("attaching", "attached", "busy", "detaching"):
                    # Still on the attendee's previous ship: take it back, if that is safe.
                    await self.detach_volume(volume_id, att["InstanceId"])
            device = await self._free_device(instance_id)
            await self._call(
                "attach",
                volume_id,
                self._ec2.attach_volume,
                VolumeId=volume_id,
                InstanceId=instance_id,
                Device=device,
            )
            await self._wait_attached(volume_id, instance_id)
            self._record("attach", volume_id, f"to {instance_id} as {device}")
            return device

    async def _wait_attached(self, volume_id: str, instance_id: str) -> None:
        def attached(volume: dict[str, Any]) -> bool:
            return any(
                a["InstanceId"] == instance_id and a["State"] == "attached"
                for a in volume.get("Attachments", [])
            )

        if not await self._wait_volume(volume_id, attached, self.attach_timeout):
            self._record("attach", volume_id, f"timeout on {instance_id}", ok=False)
            raise CloudError(
                f"attach failed on {volume_id}: not attached to {instance_id} "
                f"after {self.attach_timeout:.0f}s"
            )

    async def _instance_state(self, instance_id: str) -> str | None:
        """EC2's state of an instance; None when EC2 no longer knows it (long terminated)."""
        try:
            answer = await asyncio.to_thread(
                self._ec2.describe_instances, InstanceIds=[instance_id]
            )
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "InvalidInstanceID.NotFound":
                return None
            code = e.response.get("Error", {}).get("Code", "Unknown")
            self._record("describe instance", instance_id, code, ok=False)
            raise CloudError(f"describe instance failed on {instance_id}: {code}") from e
        reservations = answer.get("Reservations", [])
        if not reservations or not reservations[0]["Instances"]:
            return None
        return reservations[0]["Instances"][0]["State"]["Name"]

    async def detach_volume(self, volume_id: str, instance_id: str) -> None:
        volume = await self._volume(volume_id)
        states = [
            a["State"] for a in volume.get("Attachments", []) if a["InstanceId"] == instance_id
        ]
        if not states:
            return
        mounted, reported_at = self.mount_status(volume_id, instance_id)
        state = await self._instance_state(instance_id)
        why = detach_refusal(state, mounted, reported_at, time.time(), self.mounted_grace)
        if why:
            self._record("detach", volume_id, f"refused: {why}", ok=False)
            log.warning("not detaching %s from %s: %s", volume_id, instance_id, why)
            raise VolumeBusy(
                f"your home volume {volume_id} is still attached to ship {instance_id} "
                f"({state}; {why}); it moves once that ship is gone or after "
                f"{self.mounted_grace / 60:.0f} min: try again in a few minutes"
            )

        def detached(v: dict[str, Any]) -> bool:
            return not any(a["InstanceId"] == instance_id for a in v.get("Attachments", []))

        if states[0] != "detaching":
            await self._call(
                "detach",
                volume_id,
                self._ec2.detach_volume,
                VolumeId=volume_id,
                InstanceId=instance_id,
            )
        if await self._wait_volume(volume_id, detached, self.detach_timeout):
            self._record("detach", volume_id, f"from {instance_id}")
            return
        # A dead ship never unmounts: force it (the attendee's next ship mounts it cleanly).
        log.warning("volume %s stuck detaching from %s; forcing", volume_id, instance_id)
        await self._call(
            "force detach",
            volume_id,
            self._ec2.detach_volume,
            VolumeId=volume_id,
            InstanceId=instance_id,
            Force=True,
        )
        if not await self._wait_volume(volume_id, detached, self.detach_timeout):
            self._record("detach", volume_id, f"stuck on {instance_id}", ok=False)
            raise CloudError(
                f"detach failed on {volume_id}: still attached to {instance_id} after force"
            )
        self._record("detach", volume_id, f"forced from {instance_id}")

    async def set_protected(self, instance_id: str, protected: bool) -> None:
        action = "protect" if protected else "unprotect"
        await self._call(
            action,
            instance_id,
            self._autoscaling.set_instance_protection,
            InstanceIds=[instance_id],
            AutoScalingGroupName=self.group_name,
            ProtectedFromScaleIn=protected,
        )
        self._record(action, instance_id)

    async def mark_unhealthy(self, instance_id: str, reason: str) -> None:
        await self._call(
            "mark unhealthy",
            instance_id,
            self._autoscaling.set_instance_health,
            InstanceId=instance_id,
            HealthStatus="Unhealthy",
            ShouldRespectGracePeriod=False,
        )
        log.warning("ship %s marked unhealthy: %s", instance_id, reason)
        self._record("unhealthy", instance_id, reason)

    async def set_desired_capacity(self, capacity: int) -> None:
        await self._call(
            "set desired capacity",
            self.group_name,
            self._autoscaling.set_desired_capacity,
            AutoScalingGroupName=self.group_name,
            DesiredCapacity=capacity,
            HonorCooldown=False,
        )
        self._record("desired capacity", self.group_name, str(capacity))

    async def remove_ship(self, instance_id: str) -> None:
        # Scale-in protection guards held ships against the group's own choices; the mux
        # removes only a free ship it chose, so lift it first (a no-op when not protected).
        await self.set_protected(instance_id, False)
        await self._call(
            "remove",
            instance_id,
            self._autoscaling.terminate_instance_in_auto_scaling_group,
            InstanceId=instance_id,
            ShouldDecrementDesiredCapacity=True,
        )
        self._record("remove", instance_id, "terminated, desired capacity - 1")

    async def publish_metrics(self, sample: FleetSample) -> None:
        for batch in cloudwatch.batches(cloudwatch.metric_data(self.stack, sample)):
            await self._call(
                "publish metrics",
                self.namespace,
                self._cloudwatch.put_metric_data,
                Namespace=self.namespace,
                MetricData=batch,
            )

    async def list_volumes(self) -> list[tuple[str, str]]:
        def collect() -> list[tuple[str, str]]:
            pages = self._ec2.get_paginator("describe_volumes").paginate(
                Filters=home_volume_filters(self.stack)
            )
            return sorted(
                (v["VolumeId"], v["AvailabilityZone"]) for page in pages for v in page["Volumes"]
            )

        return await self._call("list volumes", self.stack, collect)

    async def tag_owner(self, volume_id: str, owner: str) -> None:
        await self._call(
            "tag owner",
            volume_id,
            self._ec2.create_tags,
            Resources=[volume_id],
            Tags=[{"Key": OWNER_TAG, "Value": owner}],
        )
        self._record("tag owner", volume_id, owner)

    async def volume_owners(self) -> dict[str, str]:
        def collect() -> dict[str, str]:
            pages = self._ec2.get_paginator("describe_volumes").paginate(
                Filters=[
                    *home_volume_filters(self.stack),
                    {"Name": "tag-key", "Values": [OWNER_TAG]},
                ]
            )
            return {
                v["VolumeId"]: t["Value"]
                for page in pages
                for v in page["Volumes"]
                for t in v.get("Tags", [])
                if t["Key"] == OWNER_TAG and t["Value"]
            }

        return await self._call("list volume owners", self.stack, collect)
