"""`campfleet:restoreFrom`: which snapshot (and whose files) each home volume starts from.

A new stack's home volume for slot i is created from the i-th snapshot of the manifest
`campfleet archive` wrote (owned volumes first), with the owner tag set, so the mux binds it to
that attendee on its first start and they get their own files back when they log in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from campfleet.archive import ArchiveError, Manifest, read_ssm

SSM_PREFIX = "ssm:"


@dataclass(frozen=True)
class Restored:
    snapshot_id: str
    owner: str | None
    size_gib: int  # a volume is never smaller than its snapshot


def load_manifest(location: str, project_dir: Path, region: str) -> Manifest:
    """Read a manifest from a file (relative to the project) or from SSM (`ssm:/path`).

    The caller checks `manifest.check_place(account, region)`: a snapshot is usable only in
    its own account and region.
    """
    if location.startswith(SSM_PREFIX):
        import boto3

        path = location[len(SSM_PREFIX) :]
        return read_ssm(boto3.client("ssm", region_name=region), path)
    path = Path(location)
    path = path if path.is_absolute() else project_dir / path
    try:
        text = path.read_text()
    except OSError as exc:
        raise ArchiveError(
            f"campfleet:restoreFrom: cannot read {path} ({exc.strerror}); give the manifest "
            "file `campfleet archive` wrote, or ssm:/campfleet/<old stack>/archive-manifest"
        ) from None
    return Manifest.from_json(text, str(path))


def plan_restore(manifest: Manifest, ships: int, home_volume_gib: int) -> dict[int, Restored]:
    """Slot -> what its volume is created from; every owner's files get a slot."""
    entries = manifest.restorable()
    owned = [e for e in entries if e.owner]
    if len(owned) > ships:
        raise ArchiveError(
            f"campfleet:restoreFrom: the manifest holds {len(owned)} attendees' volumes but "
            f"campfleet:ships is {ships}; set campfleet:ships to at least {len(owned)}"
        )
    return {
        slot: Restored(e.snapshot_id, e.owner, max(home_volume_gib, e.size_gib))
        for slot, e in enumerate(entries[:ships])
    }


def restore_plan(location: str, project_dir: Path, config: Any) -> dict[int, Restored]:
    """campfleet:restoreFrom for the program: {} when unset; a bad manifest, one from another
    account or region, or too few ships stops the program with one line."""
    if not location:
        return {}
    try:
        region = aws.get_region().region
        manifest = load_manifest(location, project_dir, region)
        account = aws.get_caller_identity().account_id
        manifest.check_place(account, region, f"campfleet:restoreFrom {location}")
        return plan_restore(manifest, config.ships, config.home_volume_gib)
    except ArchiveError as exc:
        raise pulumi.RunError(str(exc)) from None
