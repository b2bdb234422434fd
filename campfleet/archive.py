"""Archive a stack's home volumes as snapshots, and the manifest a later stack restores from.

`campfleet archive` (campfleet/cli/archive.py) drives this; `campfleet:restoreFrom` reads the
manifest back (components/restore.py). The manifest says, per home volume, whose files it holds
and which snapshot has them, plus the account and region the snapshots live in (a snapshot
cannot be used from another account or region without sharing or copying it first).

It is written to a file and to the stack's SSM namespace. One SSM parameter holds at most 4 KB
(standard tier), far less than a large class's manifest, so it is stored as numbered parts
under `/campfleet/<stack>/archive-manifest/`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

from campfleet.homevolumes import HomeVolume, list_home_volumes
from campfleet.tags import EVENT_TAG, OWNER_TAG, SLOT_TAG, SNAPSHOT_TAG, STACK_TAG

MANIFEST_VERSION = 1
SSM_PART_CHARS = 4000  # standard-tier parameters hold 4096 characters
ARCHIVE = "archive"


class ArchiveError(Exception):
    """A manifest that cannot be used; the text says what is wrong and what to do."""


def manifest_parameter(stack: str) -> str:
    """The SSM path under which `stack`'s manifest parts live."""
    return f"/campfleet/{stack}/archive-manifest"


@dataclass(frozen=True)
class Entry:
    """One home volume in a manifest."""

    volume_id: str
    slot: Optional[int]
    owner: Optional[str]
    zone: str
    size_gib: int
    snapshot_id: str = ""
    state: str = ""  # EC2 snapshot state: pending | completed | error ("" = none taken)
    error: str = ""


@dataclass(frozen=True)
class Manifest:
    stack: str
    event: str
    account: str
    region: str
    created: float
    entries: list[Entry] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return bool(self.entries) and all(e.state == "completed" for e in self.entries)

    @property
    def failed(self) -> list[Entry]:
        return [e for e in self.entries if e.state != "completed"]

    def to_json(self) -> str:
        doc = {"version": MANIFEST_VERSION, **asdict(self)}
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            doc = json.loads(text)
            if doc.get("version") != MANIFEST_VERSION:
                raise ArchiveError(
                    f"{where}: manifest version {doc.get('version')!r}; this campfleet reads "
                    f"version {MANIFEST_VERSION}"
                )
            entries = [Entry(**e) for e in doc["entries"]]
            return cls(
                stack=str(doc["stack"]),
                event=str(doc["event"]),
                account=str(doc["account"]),
                region=str(doc["region"]),
                created=float(doc["created"]),
                entries=entries,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArchiveError(
                f"{where}: not a campfleet archive manifest ({type(exc).__name__}: {exc}); "
                "use the file or SSM path `campfleet archive` printed"
            ) from None

    def restorable(self) -> list[Entry]:
        """Entries whose snapshot is complete, owned ones first (they get the lowest slots)."""
        done = [e for e in self.entries if e.state == "completed" and e.snapshot_id]
        return sorted(done, key=lambda e: (e.owner is None, e.owner or "", e.slot or 0))

    def check_place(self, account: str, region: str, where: str) -> None:
        """Refuse a manifest whose snapshots live in another account or region."""
        if self.account != account or self.region != region:
            raise ArchiveError(
                f"{where}: its snapshots are in account {self.account}, region {self.region}; "
                f"this stack deploys to account {account}, region {region}. Share and copy the "
                "snapshots there (aws ec2 copy-snapshot) and archive again there, or deploy "
                f"this stack to {self.account}/{self.region}"
            )


# --- SSM --------------------------------------------------------------------------------------


def write_ssm(ssm: Any, manifest: Manifest) -> str:
    """Store the manifest as numbered parts under the stack's SSM path; return that path."""
    path = manifest_parameter(manifest.stack)
    text = manifest.to_json()
    parts = [text[i : i + SSM_PART_CHARS] for i in range(0, len(text), SSM_PART_CHARS)]
    for index, part in enumerate(parts):
        # SecureString: the manifest names every attendee (aws/ssm key, no extra cost).
        ssm.put_parameter(
            Name=f"{path}/part-{index:04d}", Value=part, Type="SecureString", Overwrite=True
        )
    # Parts left from a longer, earlier manifest would corrupt the joined text.
    stale = [
        p["Name"] for p in _parameters(ssm, path) if int(p["Name"].rsplit("-", 1)[1]) >= len(parts)
    ]
    for start in range(0, len(stale), 10):
        ssm.delete_parameters(Names=stale[start : start + 10])
    return path


def _parameters(ssm: Any, path: str) -> list[dict[str, Any]]:
    pages = ssm.get_paginator("get_parameters_by_path").paginate(
        Path=path, Recursive=False, WithDecryption=True
    )
    found = [p for page in pages for p in page["Parameters"]]
    return sorted(
        (p for p in found if p["Name"].rsplit("/", 1)[1].startswith("part-")),
        key=lambda p: p["Name"],
    )


def read_ssm(ssm: Any, path: str) -> Manifest:
    parts = _parameters(ssm, path.rstrip("/"))
    if not parts:
        raise ArchiveError(
            f"ssm:{path}: no manifest there; run `campfleet archive --stack <old stack>` first"
        )
    return Manifest.from_json("".join(p["Value"] for p in parts), f"ssm:{path}")


# --- taking the snapshots ---------------------------------------------------------------------


def _tags(tags: Iterable[dict[str, str]]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags}


def archive_snapshots(ec2: Any, stack: str) -> dict[str, dict[str, Any]]:
    """The latest archive snapshot of each home volume of `stack` (by volume id), any state
    but error (a failed one is taken again)."""
    pages = ec2.get_paginator("describe_snapshots").paginate(
        OwnerIds=["self"],
        Filters=[
            {"Name": f"tag:{STACK_TAG}", "Values": [stack]},
            {"Name": f"tag:{SNAPSHOT_TAG}", "Values": [ARCHIVE]},
        ],
    )
    latest: dict[str, dict[str, Any]] = {}
    for page in pages:
        for snap in page["Snapshots"]:
            if snap["State"] == "error":
                continue
            known = latest.get(snap["VolumeId"])
            if known is None or snap["StartTime"] > known["StartTime"]:
                latest[snap["VolumeId"]] = snap
    return latest


def owned_volumes(ec2: Any, stack: str) -> list[HomeVolume]:
    """The stack's home volumes, each marked `archived` when it has a completed archive
    snapshot: what the Pulumi-side guard needs (an archived volume may be deleted)."""
    done = {v for v, snap in archive_snapshots(ec2, stack).items() if snap["State"] == "completed"}
    return [replace(v, archived=v.volume_id in done) for v in list_home_volumes(ec2, stack)]


def snapshot_tags(stack: str, event: str, volume: HomeVolume) -> list[dict[str, str]]:
    tags = {STACK_TAG: stack, EVENT_TAG: event, SNAPSHOT_TAG: ARCHIVE}
    tags["Name"] = f"campfleet-{stack}-archive-{volume.slot if volume.slot is not None else '?'}"
    if volume.slot is not None:
        tags[SLOT_TAG] = str(volume.slot)
    if volume.owner:
        tags[OWNER_TAG] = volume.owner
    return [{"Key": k, "Value": v} for k, v in tags.items()]


@dataclass
class Archive:
    """One archive run: the volumes, the snapshot of each, and what failed."""

    stack: str
    event: str
    account: str
    region: str
    volumes: list[HomeVolume]
    snapshots: dict[str, str] = field(default_factory=dict)  # volume id -> snapshot id
    states: dict[str, str] = field(default_factory=dict)  # volume id -> snapshot state
    errors: dict[str, str] = field(default_factory=dict)  # volume id -> reason
    taken: list[str] = field(default_factory=list)  # volume ids snapshotted by this run

    def manifest(self) -> Manifest:
        return Manifest(
            stack=self.stack,
            event=self.event,
            account=self.account,
            region=self.region,
            created=time.time(),
            entries=[
                Entry(
                    volume_id=v.volume_id,
                    slot=v.slot,
                    owner=v.owner,
                    zone=v.zone,
                    size_gib=v.size_gib,
                    snapshot_id=self.snapshots.get(v.volume_id, ""),
                    state=self.states.get(v.volume_id, ""),
                    error=self.errors.get(v.volume_id, ""),
                )
                for v in self.volumes
            ],
        )


def start(ec2: Any, stack: str, event: str, account: str, region: str) -> Archive:
    """Snapshot every home volume that has no archive snapshot yet (a re-run takes only what
    is missing or failed); record the ones already there."""
    from botocore.exceptions import ClientError

    volumes = list_home_volumes(ec2, stack)
    run = Archive(stack, event, account, region, volumes)
    existing = archive_snapshots(ec2, stack)
    for volume in volumes:
        snap = existing.get(volume.volume_id)
        if snap is not None:
            run.snapshots[volume.volume_id] = snap["SnapshotId"]
            run.states[volume.volume_id] = snap["State"]
            continue
        try:
            made = ec2.create_snapshot(
                VolumeId=volume.volume_id,
                Description=f"campfleet archive of {stack} slot {volume.slot} "
                f"({volume.owner or 'unused'})",
                TagSpecifications=[
                    {"ResourceType": "snapshot", "Tags": snapshot_tags(stack, event, volume)}
                ],
            )
        except ClientError as exc:
            err = exc.response.get("Error", {})
            run.errors[volume.volume_id] = f"{err.get('Code')}: {err.get('Message')}"
            run.states[volume.volume_id] = "error"
            continue
        run.snapshots[volume.volume_id] = made["SnapshotId"]
        run.states[volume.volume_id] = made.get("State", "pending")
        run.taken.append(volume.volume_id)
    return run


def wait(
    ec2: Any,
    run: Archive,
    timeout: float,
    interval: float = 5.0,
    progress: Callable[[Archive], None] = lambda run: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll until every snapshot is completed or failed, or `timeout`; pending ones left at the
    timeout are failures ("still pending") so the run says it is not safe to destroy."""
    deadline = clock() + timeout
    while True:
        pending = {run.snapshots[v]: v for v, state in run.states.items() if state == "pending"}
        progress(run)
        if not pending:
            return
        if clock() >= deadline:
            for volume_id in pending.values():
                run.errors[volume_id] = f"snapshot still pending after {timeout:.0f} s"
            return
        sleep(interval)
        ids = list(pending)
        for start_at in range(0, len(ids), 200):
            answer = ec2.describe_snapshots(SnapshotIds=ids[start_at : start_at + 200])
            for snap in answer["Snapshots"]:
                volume_id = pending[snap["SnapshotId"]]
                run.states[volume_id] = snap["State"]
                if snap["State"] == "error":
                    run.errors[volume_id] = snap.get("StateMessage") or "snapshot failed"
