"""`campfleet archive` against moto: snapshots, manifest in a file and in SSM, re-runs, failures.

moto completes every snapshot at once and never fails one; the pending-then-error path is
driven with botocore's Stubber, and a refused CreateSnapshot is injected on the moto client.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from campfleet import archive
from campfleet.cli import main
from campfleet.homevolumes import HomeVolume

ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"  # Pulumi.dev.yaml's


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.client("ec2", region_name=REGION)


def home(ec2: Any, slot: int, owner: str | None = None, stack: str = "dev") -> str:
    tags = {"campfleet:stack": stack, "campfleet:role": "home", "campfleet:slot": str(slot)}
    if owner:
        tags["campfleet:owner"] = owner
    return ec2.create_volume(
        AvailabilityZone=f"{REGION}a",
        Size=10,
        TagSpecifications=[
            {"ResourceType": "volume", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )["VolumeId"]


def snapshots(ec2: Any) -> list[dict[str, Any]]:
    archives = [{"Name": "tag:campfleet:snapshot", "Values": ["archive"]}]
    return ec2.describe_snapshots(OwnerIds=["self"], Filters=archives)["Snapshots"]


def archive_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[int, str, str]:
    code = main(
        [
            "archive",
            "--stack",
            "dev",
            "--project-dir",
            str(ROOT),
            "--manifest",
            str(tmp_path / "manifest.json"),
        ]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_archive_snapshots_every_home_volume_and_says_destroy_is_safe(
    aws: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann, bob, unused = home(aws, 0, "ann"), home(aws, 1, "bob"), home(aws, 2)
    home(aws, 0, "zed", stack="prod")  # another stack's: not archived
    code, out, err = archive_cli(capsys, tmp_path)
    assert code == 0, err
    assert "every home volume (3) has a completed snapshot: destroying the stack is safe" in out
    manifest = archive.Manifest.from_json((tmp_path / "manifest.json").read_text(), "file")
    assert (manifest.stack, manifest.account, manifest.region) == ("dev", "123456789012", REGION)
    by_volume = {e.volume_id: e for e in manifest.entries}
    assert set(by_volume) == {ann, bob, unused}
    assert (by_volume[ann].owner, by_volume[bob].owner, by_volume[unused].owner) == (
        "ann",
        "bob",
        None,
    )
    assert all(e.state == "completed" and e.zone == f"{REGION}a" for e in manifest.entries)
    assert all(e.size_gib == 10 for e in manifest.entries)
    snaps = {s["SnapshotId"]: s for s in snapshots(aws)}
    assert set(snaps) == {e.snapshot_id for e in manifest.entries}
    tags = {t["Key"]: t["Value"] for t in snaps[by_volume[ann].snapshot_id]["Tags"]}
    assert tags["campfleet:owner"] == "ann" and tags["campfleet:snapshot"] == "archive"
    assert tags["campfleet:stack"] == "dev" and tags["campfleet:slot"] == "0"
    # The same manifest is in the stack's SSM namespace.
    ssm = boto3.client("ssm", region_name=REGION)
    assert archive.read_ssm(ssm, "/campfleet/dev/archive-manifest") == manifest


def test_a_rerun_takes_only_what_is_missing(
    aws: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home(aws, 0, "ann")
    home(aws, 1, "bob")
    assert archive_cli(capsys, tmp_path)[0] == 0
    first = {s["SnapshotId"] for s in snapshots(aws)}
    assert archive_cli(capsys, tmp_path)[0] == 0
    assert {s["SnapshotId"] for s in snapshots(aws)} == first  # nothing taken twice
    late = home(aws, 2, "cy")  # a volume the first run did not have
    code, out, _ = archive_cli(capsys, tmp_path)
    assert code == 0 and "1 snapshots started, 2 already taken" in out
    new = [s for s in snapshots(aws) if s["SnapshotId"] not in first]
    assert [s["VolumeId"] for s in new] == [late]


def test_a_failed_volume_is_named_and_destroy_is_not_safe(
    aws: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    home(aws, 0, "ann")
    broken = home(aws, 1, "bob")
    real_client = boto3.session.Session.client

    def client(self: Any, name: str, *a: Any, **kw: Any) -> Any:
        made = real_client(self, name, *a, **kw)
        if name == "ec2":
            create = made.create_snapshot

            def refuse_one(**kwargs: Any) -> Any:
                if kwargs["VolumeId"] == broken:
                    raise ClientError(
                        {
                            "Error": {
                                "Code": "SnapshotCreationPerVolumeRateExceeded",
                                "Message": "x",
                            }
                        },
                        "CreateSnapshot",
                    )
                return create(**kwargs)

            made.create_snapshot = refuse_one
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    code, out, err = archive_cli(capsys, tmp_path)
    assert code == 1
    assert "1 of 2 home volumes have no completed snapshot; destroying the stack is NOT safe" in err
    assert f"slot 1 {broken} (bob): SnapshotCreationPerVolumeRateExceeded" in err
    assert "Traceback" not in err
    monkeypatch.setattr(boto3.session.Session, "client", real_client)
    code, out, err = archive_cli(capsys, tmp_path)  # the re-run takes just bob's
    assert code == 0, err
    assert "1 snapshots started, 1 already taken" in out


def test_pending_snapshots_are_waited_for_and_failures_recorded() -> None:
    ec2 = boto3.client("ec2", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    run = archive.Archive(
        "dev",
        "dev",
        "123456789012",
        REGION,
        [HomeVolume("vol-1", f"{REGION}a", 10, 0, "ann"), HomeVolume("vol-2", "z", 10, 1, None)],
        snapshots={"vol-1": "snap-1", "vol-2": "snap-2"},
        states={"vol-1": "pending", "vol-2": "pending"},
    )
    stub = Stubber(ec2)
    ids = {"SnapshotIds": ["snap-1", "snap-2"]}

    def answer(*states: str) -> dict:
        return {
            "Snapshots": [
                {"SnapshotId": f"snap-{i + 1}", "State": s, "StateMessage": "disk error"}
                for i, s in enumerate(states)
            ]
        }

    stub.add_response("describe_snapshots", answer("pending", "pending"), ids)
    stub.add_response("describe_snapshots", answer("completed", "error"), ids)
    seen: list[dict] = []
    with stub:
        archive.wait(ec2, run, 60, progress=lambda r: seen.append(dict(r.states)), sleep=id)
    assert run.states == {"vol-1": "completed", "vol-2": "error"}
    assert run.errors == {"vol-2": "disk error"}
    assert len(seen) == 3
    assert [e.volume_id for e in run.manifest().failed] == ["vol-2"]

    # Still pending at the timeout: a failure too (the snapshot is not there yet).
    run.states["vol-2"] = "pending"
    clock = iter([0.0, 100.0])
    archive.wait(ec2, run, 60, sleep=id, clock=lambda: next(clock))
    assert run.errors["vol-2"] == "snapshot still pending after 60 s"


def test_ssm_manifest_is_split_into_parts_and_stale_parts_go(aws: Any) -> None:
    ssm = boto3.client("ssm", region_name=REGION)
    entries = [
        archive.Entry(
            f"vol-{i:017x}", i, f"attendee-{i}", f"{REGION}a", 10, f"snap-{i:017x}", "completed"
        )
        for i in range(300)
    ]
    big = archive.Manifest("dev", "dev", "123456789012", REGION, 1.0, entries)
    path = archive.write_ssm(ssm, big)
    parts = ssm.get_parameters_by_path(Path=path, MaxResults=10, WithDecryption=True)
    assert len(json.loads(big.to_json())["entries"]) == 300
    assert {p["Type"] for p in parts["Parameters"]} == {"SecureString"}
    assert all(len(p["Value"]) <= 4096 for p in parts["Parameters"])
    assert archive.read_ssm(ssm, path) == big
    small = archive.Manifest("dev", "dev", "123456789012", REGION, 2.0, entries[:3])
    archive.write_ssm(ssm, small)
    assert archive.read_ssm(ssm, path) == small


def test_archive_without_volumes_or_region_is_one_clear_line(
    aws: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = archive_cli(capsys, tmp_path)
    assert code == 2 and err.startswith("campfleet: no home volumes of stack 'dev' in")
    code = main(["archive", "--stack", "gone", "--project-dir", str(ROOT)])
    err = capsys.readouterr().err
    assert code == 2 and "no aws:region in its stack file; pass --region" in err


def test_restore_reads_the_manifest_archive_wrote_to_ssm(aws: Any, tmp_path: Path) -> None:
    from components.restore import load_manifest, plan_restore

    ssm = boto3.client("ssm", region_name=REGION)
    entries = [archive.Entry("vol-1", 0, "ann", f"{REGION}a", 10, "snap-1", "completed")]
    written = archive.Manifest("old", "old", "123456789012", REGION, 1.0, entries)
    path = archive.write_ssm(ssm, written)
    assert load_manifest(f"ssm:{path}", tmp_path, REGION) == written
    assert plan_restore(written, 2, 10)[0].owner == "ann"
    with pytest.raises(archive.ArchiveError, match="no manifest there"):
        load_manifest("ssm:/campfleet/never/archive-manifest", tmp_path, REGION)
