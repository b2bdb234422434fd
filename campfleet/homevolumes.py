"""The stack's home volumes as AWS holds them: id, zone, size, slot and owner (from tags).

Read by the Pulumi-side guard (policy pack, `campfleet plan --check-owners`), by
`campfleet archive` and by the mux rebuilding its registry. The owner tag is written by the
mux when it first hands a volume to an attendee (campfleet.mux.cloud), so this is the one
record of who would lose their files that lives outside the mux.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from campfleet.tags import HOME_ROLE, OWNER_TAG, ROLE_TAG, SLOT_TAG, STACK_TAG


@dataclass(frozen=True)
class HomeVolume:
    volume_id: str
    zone: str
    size_gib: int
    slot: Optional[int]
    owner: Optional[str]
    state: str = "available"  # EC2's volume state
    attached_to: Optional[str] = None  # instance id
    archived: bool = False  # has a completed `campfleet archive` snapshot (see with_archives)

    @property
    def region(self) -> str:
        return self.zone[:-1]


def from_description(volume: dict[str, Any]) -> HomeVolume:
    """A HomeVolume from one DescribeVolumes entry."""
    tags = {t["Key"]: t["Value"] for t in volume.get("Tags", [])}
    slot = tags.get(SLOT_TAG, "")
    attached = [a["InstanceId"] for a in volume.get("Attachments", [])]
    return HomeVolume(
        volume_id=volume["VolumeId"],
        zone=volume["AvailabilityZone"],
        size_gib=int(volume["Size"]),
        slot=int(slot) if slot.isdigit() else None,
        owner=tags.get(OWNER_TAG) or None,
        state=volume.get("State", "available"),
        attached_to=attached[0] if attached else None,
    )


def home_volume_filters(stack: str) -> list[dict[str, Any]]:
    return [
        {"Name": f"tag:{STACK_TAG}", "Values": [stack]},
        {"Name": f"tag:{ROLE_TAG}", "Values": [HOME_ROLE]},
    ]


def list_home_volumes(ec2: Any, stack: str) -> list[HomeVolume]:
    """Every home volume of `stack` (a boto3 EC2 client), ordered by slot then id."""
    pages = ec2.get_paginator("describe_volumes").paginate(Filters=home_volume_filters(stack))
    found = [from_description(v) for page in pages for v in page["Volumes"]]
    return sorted(found, key=lambda v: (v.slot is None, v.slot or 0, v.volume_id))
