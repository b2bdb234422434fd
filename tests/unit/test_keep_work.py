"""Issue 13, Pulumi side: ordinary config edits never delete or replace an attendee's volume.

Each accident is performed: the program is evaluated before and after an organizer's edit
(or AWS listing its zones differently) and the home volumes Pulumi would delete or replace are
computed from the two runs the way Pulumi diffs them (a replacing input that changed and is
not in ignoreChanges). The policy pack's owner check runs against moto.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from campfleet import evaluate as evaluate_mod
from campfleet import policies
from campfleet.evaluate import Evaluation, evaluate
from campfleet.homevolumes import list_home_volumes
from components.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]
VOLUME = "aws:ebs/volume:Volume"


def subjects(evaluation: Evaluation) -> list[policies.Subject]:
    return [policies.subject(r) for r in evaluation.resources]


def homes(evaluation: Evaluation) -> dict[int, Any]:
    return {
        int(s.props["tags"]["campfleet:slot"]): s
        for s in policies.home_slots(subjects(evaluation)).values()
    }


def changes(before: Evaluation, after: Evaluation) -> dict[int, str]:
    return policies.home_volume_changes(subjects(before), subjects(after))


def test_adding_a_zone_never_replaces_a_home_volume() -> None:
    two = evaluate(ROOT, "dev", {"campfleet:ships": 6, "campfleet:availabilityZones": 2})
    three = evaluate(ROOT, "dev", {"campfleet:ships": 6, "campfleet:availabilityZones": 3})
    # The program's round-robin puts slot 2 in the new zone; Pulumi must not follow it.
    assert homes(two)[2].props["availabilityZone"] != homes(three)[2].props["availabilityZone"]
    assert changes(two, three) == {}


def test_aws_listing_zones_differently_never_replaces_a_home_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = evaluate(ROOT, "dev", {"campfleet:ships": 4})
    mocks = evaluate_mod._mocks_class

    def zone_a_gone() -> type:
        base = mocks()

        class ZoneGone(base):  # type: ignore[misc, valid-type]
            def call(self, args: Any) -> dict:
                answer = base.call(self, args)
                if args.token.endswith("getAvailabilityZones"):
                    answer = {**answer, "names": answer["names"][1:]}
                return answer

        return ZoneGone

    monkeypatch.setattr(evaluate_mod, "_mocks_class", zone_a_gone)
    after = evaluate(ROOT, "dev", {"campfleet:ships": 4})
    assert homes(after)[0].props["availabilityZone"] == "us-east-1b"  # the list moved
    assert changes(before, after) == {}
    # Pinned zone names do not move at all: not the volumes, not the ship subnets.
    pinned = {"campfleet:ships": 4, "campfleet:zoneNames": ["us-east-1a", "us-east-1b"]}
    again = evaluate(ROOT, "dev", pinned)
    assert {s.props["availabilityZone"] for s in homes(again).values()} == {
        "us-east-1a",
        "us-east-1b",
    }
    subnets = {
        r.inputs["availabilityZone"]
        for r in again.of_type("aws:ec2/subnet:Subnet")
        if r.inputs["tags"]["campfleet:role"] == "ship"
    }
    assert subnets == {"us-east-1a", "us-east-1b"}


def test_home_volumes_take_a_final_snapshot_and_are_protected_by_default() -> None:
    default = evaluate(ROOT, "default", {"campfleet:ships": 2})
    for volume in homes(default).values():
        assert volume.props["finalSnapshot"] is True
        assert volume.protect is True
    assert parse_config("x", {"campfleet:ships": 1}).protect_home_volumes is True


def test_plan_base_names_each_home_volume_a_lower_ship_count_deletes() -> None:
    before = evaluate(ROOT, "dev", {"campfleet:ships": 5})
    after = evaluate(ROOT, "dev", {"campfleet:ships": 3})
    found = policies.home_change_findings(subjects(before), subjects(after))
    assert [f.name for f in found] == ["ships-home-0003", "ships-home-0004"]
    assert all(f.policy == "home-volumes-kept" and "deleted" in f.message for f in found)


def test_zone_change_without_ignore_changes_counts_as_replacement() -> None:
    """The diff model itself: a zone change Pulumi would act on is a replacement."""
    tags = {"campfleet:role": "home", "campfleet:slot": "0"}
    old = policies.Subject(VOLUME, "v", "u", {"availabilityZone": "a", "tags": tags})
    new = policies.Subject(VOLUME, "v", "u", {"availabilityZone": "b", "tags": tags})
    assert policies.home_volume_changes([old], [new]) == {
        0: "replaced (availabilityZone 'a' -> 'b')"
    }
    ignoring = policies.Subject(
        VOLUME, "v", "u", new.props, ignore_changes=frozenset({"availabilityZone"})
    )
    assert policies.home_volume_changes([old], [ignoring]) == {}


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"campfleet:zoneNames": ["us-east-1a"]}, "campfleet:zoneNames"),
        ({"campfleet:zoneNames": ["us-east-1a", "us-east-1a"]}, "campfleet:zoneNames"),
        (
            {"aws:region": "eu-west-1", "campfleet:zoneNames": ["us-east-1a", "us-east-1b"]},
            "not in aws:region eu-west-1",
        ),
        ({"campfleet:snapshotEveryHours": 5}, "campfleet:snapshotEveryHours: got 5"),
        ({"campfleet:snapshotsKept": 0}, "campfleet:snapshotsKept: got 0"),
    ],
)
def test_bad_keep_work_config_is_one_clear_line(values: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("x", {"campfleet:ships": 2, **values})
    assert err.value.problems and all(problem in line for line in err.value.problems)


# --- the policy pack's owner check, against moto ------------------------------------------


@pytest.fixture(scope="module")
def pack() -> Any:
    spec = importlib.util.spec_from_file_location("campfleet_pack_k", ROOT / "policy/__main__.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stack_args(evaluation: Evaluation) -> Any:
    from pulumi_policy import (
        PolicyCustomTimeouts,
        PolicyResource,
        PolicyResourceOptions,
        StackValidationArgs,
    )

    resources = [
        PolicyResource(
            r.type,
            r.inputs,
            r.urn,
            r.name,
            PolicyResourceOptions(
                r.protect,
                sorted(r.ignore_changes),
                None,
                [],
                PolicyCustomTimeouts(0, 0, 0),
                [],
                None,
            ),
            None,
            None,
            [],
            {},
        )
        for r in evaluation.resources
    ]
    return StackValidationArgs(resources)


def run_stack_policy(pack: Any, evaluation: Evaluation) -> list[str]:
    reported: list[str] = []
    pack.validate_home_volumes_kept(stack_args(evaluation), lambda m, urn=None: reported.append(m))
    return reported


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield boto3.client("ec2", region_name="us-east-1")


def make_home(ec2: Any, slot: int, zone: str, owner: str | None) -> str:
    tags = [
        {"Key": "campfleet:stack", "Value": "dev"},
        {"Key": "campfleet:role", "Value": "home"},
        {"Key": "campfleet:slot", "Value": str(slot)},
    ]
    if owner:
        tags.append({"Key": "campfleet:owner", "Value": owner})
    volume = ec2.create_volume(
        AvailabilityZone=zone,
        Size=10,
        TagSpecifications=[{"ResourceType": "volume", "Tags": tags}],
    )
    return volume["VolumeId"]


def test_policy_pack_refuses_deleting_a_volume_an_attendee_owns(aws: Any, pack: Any) -> None:
    for slot in range(5):
        make_home(aws, slot, "us-east-1a" if slot % 2 == 0 else "us-east-1b", None)
    owned = make_home(aws, 5, "us-east-1b", "alice")
    assert [v.owner for v in list_home_volumes(aws, "dev")] == [None] * 5 + ["alice"]
    kept = evaluate(ROOT, "dev", {"campfleet:ships": 6})
    assert run_stack_policy(pack, kept) == []
    fewer = evaluate(ROOT, "dev", {"campfleet:ships": 5})  # slot 5 (alice's) would go
    [message] = run_stack_policy(pack, fewer)
    assert owned in message and "alice's files" in message and "deletes it" in message
    # Unowned slots may go: lowering to 5 with nobody on slot 5 passes.
    aws.delete_tags(Resources=[owned], Tags=[{"Key": "campfleet:owner"}])
    assert run_stack_policy(pack, fewer) == []


def test_policy_pack_refuses_when_it_cannot_read_aws(pack: Any, monkeypatch: Any) -> None:
    def no_credentials(stack: str, region: str) -> list:
        raise RuntimeError("Unable to locate credentials")

    monkeypatch.setattr(pack, "owned_home_volumes", no_credentials)
    [message] = run_stack_policy(pack, evaluate(ROOT, "dev", {"campfleet:ships": 2}))
    assert message.startswith("cannot read the home volumes' owner tags in AWS")


# --- periodic snapshots (Data Lifecycle Manager) ------------------------------------------


def test_prod_snapshots_its_home_volumes_with_dlm_and_dev_does_not() -> None:
    import json

    prod = evaluate(ROOT, "prod")
    assert evaluate(ROOT, "dev").of_type("aws:dlm/lifecyclePolicy:LifecyclePolicy") == []
    dlm = prod.one("aws:dlm/lifecyclePolicy:LifecyclePolicy").inputs
    details = dlm["policyDetails"]
    assert dlm["state"] == "ENABLED" and details["resourceTypes"] == ["VOLUME"]
    # One target tag that only this stack's home volumes carry (DLM ORs target tags).
    assert details["targetTags"] == {"campfleet:home-of": "prod"}
    targeted = [
        r for r in prod.of_type(VOLUME) if r.inputs["tags"].get("campfleet:home-of") == "prod"
    ]
    assert len(targeted) == 150 and all(
        r.inputs["tags"]["campfleet:role"] == "home" for r in targeted
    )
    [schedule] = details["schedules"]
    assert schedule["createRule"] == {"interval": 12, "intervalUnit": "HOURS"}
    assert schedule["retainRule"] == {"count": 6}
    assert schedule["copyTags"] is True  # stack, event, slot, owner onto every snapshot
    assert schedule["tagsToAdd"] == {"campfleet:snapshot": "periodic"}
    assert dlm["tags"]["campfleet:stack"] == "prod"

    roles = {r.name: r for r in prod.of_type("aws:iam/role:Role")}
    trust = json.loads(roles["snapshots-role"].inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "dlm.amazonaws.com"}
    [policy] = [
        r for r in prod.of_type("aws:iam/rolePolicy:RolePolicy") if r.name == "snapshots-policy"
    ]
    statements = {s["Sid"]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
    assert statements["SnapshotHomeVolumes"]["Resource"] == (
        "arn:aws:ec2:eu-west-1:123456789012:volume/*"
    )
    for sid in ("SnapshotHomeVolumes", "PruneSnapshots"):
        assert statements[sid]["Condition"] == {
            "StringEquals": {"aws:ResourceTag/campfleet:home-of": "prod"}
        }
    wildcard = [s for s in statements.values() if s["Resource"] == "*"]
    assert [s["Sid"] for s in wildcard] == ["Describe"]
    assert all(a.startswith("ec2:Describe") for a in wildcard[0]["Action"])
    assert statements["ManagedRules"]["Resource"] == (
        "arn:aws:events:eu-west-1:123456789012:rule/AwsDataLifecycleRule.managed-cwe.*"
    )


# --- restore (campfleet:restoreFrom) ------------------------------------------------------


def write_manifest(path: Path, region: str = "eu-west-1", account: str = "123456789012") -> Path:
    from campfleet.archive import Entry, Manifest

    entries = [
        Entry("vol-1", 0, "bob", "eu-west-1a", 20, "snap-1", "completed"),
        Entry("vol-2", 1, None, "eu-west-1a", 10, "snap-2", "completed"),
        Entry("vol-3", 2, "ann", "eu-west-1b", 10, "snap-3", "completed"),
        Entry("vol-4", 3, "cy", "eu-west-1b", 10, "", "error", "rate exceeded"),
    ]
    path.write_text(Manifest("old", "old", account, region, 1.0, entries).to_json())
    return path


def test_restore_gives_each_attendee_their_own_snapshot(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "archive-old.json")
    values = {
        "aws:region": "eu-west-1",
        "campfleet:ships": 4,
        "campfleet:restoreFrom": str(manifest),
    }
    new = evaluate(ROOT, "term2", values)
    # Owned volumes first (ann, bob), then the unused one; the failed snapshot is not used; the
    # 20 GiB volume stays 20 GiB although homeVolumeGiB is 10.
    slots = {slot: s.props for slot, s in homes(new).items()}
    assert slots[0]["snapshotId"] == "snap-3" and slots[0]["tags"]["campfleet:owner"] == "ann"
    assert slots[1]["snapshotId"] == "snap-1" and slots[1]["size"] == 20
    assert slots[2]["snapshotId"] == "snap-2" and "campfleet:owner" not in slots[2]["tags"]
    assert "snapshotId" not in slots[3] or slots[3]["snapshotId"] in (None, "")
    # The owner tag on a restored volume is what the mux binds on its first start
    # (tests/unit/test_keep_work_mux.py: a mux on empty state gives each attendee their own).


def test_restore_refuses_a_manifest_from_another_region_or_account(tmp_path: Path) -> None:
    from pulumi.errors import RunError as ArchiveError

    elsewhere = write_manifest(tmp_path / "m.json", region="us-east-1")
    values = {
        "aws:region": "eu-west-1",
        "campfleet:ships": 4,
        "campfleet:restoreFrom": str(elsewhere),
    }
    with pytest.raises(
        ArchiveError, match="its snapshots are in account 123456789012, region us-east-1"
    ):
        evaluate(ROOT, "term2", values)
    other = write_manifest(tmp_path / "o.json", account="210987654321")
    values["campfleet:restoreFrom"] = str(other)
    with pytest.raises(ArchiveError, match="this stack deploys to account 123456789012"):
        evaluate(ROOT, "term2", values)


def test_restore_problems_are_one_line_in_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from campfleet.cli import main

    manifest = write_manifest(tmp_path / "m.json")
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Pulumi.yaml", "__main__.py"):
        (project / name).symlink_to(ROOT / name)
    (project / "components").symlink_to(ROOT / "components")
    stack = project / "Pulumi.term2.yaml"
    for restore, ships, needle in (
        (str(manifest), 1, "holds 2 attendees' volumes but campfleet:ships is 1"),
        (str(tmp_path / "missing.json"), 4, "campfleet:restoreFrom: cannot read"),
    ):
        stack.write_text(
            f"config:\n  aws:region: eu-west-1\n  campfleet:ships: {ships}\n"
            f"  campfleet:restoreFrom: {restore}\n"
        )
        code = main(["plan", "--stack", "term2", "--project-dir", str(project)])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "Traceback" not in err


# The pack process as the Pulumi CLI starts it, with moto started inside it first and one
# owned home volume (slot 2, dana's) created there: the pack's own boto3 calls reach moto.
SERVED_PACK = """
import runpy, sys
import boto3
from moto import mock_aws
mock_aws().start()
ec2 = boto3.client("ec2", region_name="us-east-1")
tags = {"campfleet:stack": "dev", "campfleet:role": "home", "campfleet:slot": "2",
        "campfleet:owner": "dana"}
volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, TagSpecifications=[
    {"ResourceType": "volume", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])
sys.stderr.write(volume["VolumeId"] + "\\n")
sys.stderr.flush()
sys.argv = ["pulumi.policy", "127.0.0.1:1", sys.argv[1]]
runpy.run_module("pulumi.policy", run_name="__main__")
"""


@pytest.mark.slow
def test_served_pack_refuses_deleting_an_owned_volume() -> None:
    """gRPC AnalyzeStack, the way `pulumi preview --policy-pack policy` asks the pack."""
    import os
    import select
    import subprocess
    import sys

    import grpc
    from google.protobuf import struct_pb2
    from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", SERVED_PACK, str(ROOT / "policy")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        port = int(proc.stdout.readline().strip() or 0) if ready else 0
        assert port, proc.stderr.read() if proc.poll() is not None else "no port printed"
        owned = proc.stderr.readline().strip()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = analyzer_pb2_grpc.AnalyzerStub(channel)

        def analyze(ships: int) -> list[Any]:
            evaluation = evaluate(ROOT, "dev", {"campfleet:ships": ships})
            resources = []
            for r in evaluation.of_type(VOLUME):
                props = struct_pb2.Struct()
                props.update(r.inputs)
                options = analyzer_pb2.AnalyzerResourceOptions(
                    protect=r.protect, ignoreChanges=sorted(r.ignore_changes)
                )
                resources.append(
                    analyzer_pb2.AnalyzerResource(
                        type=r.type, properties=props, urn=r.urn, name=r.name, options=options
                    )
                )
            request = analyzer_pb2.AnalyzeStackRequest(resources=resources)
            return list(stub.AnalyzeStack(request, timeout=60).diagnostics)

        assert analyze(3) == []  # slot 2 (dana's) stays
        [diag] = analyze(2)  # slot 2 would be deleted
        assert diag.policyName == "home-volumes-kept"
        assert diag.enforcementLevel == analyzer_pb2.MANDATORY
        assert f"home volume {owned} (slot 2) holds dana's files" in diag.message
        channel.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_policy_pack_lets_an_archived_volume_go(aws: Any, pack: Any) -> None:
    owned = make_home(aws, 2, "us-east-1a", "eve")
    fewer = evaluate(ROOT, "dev", {"campfleet:ships": 2})
    [message] = run_stack_policy(pack, fewer)
    assert "eve's files" in message
    aws.create_snapshot(
        VolumeId=owned,
        TagSpecifications=[
            {
                "ResourceType": "snapshot",
                "Tags": [
                    {"Key": "campfleet:stack", "Value": "dev"},
                    {"Key": "campfleet:snapshot", "Value": "archive"},
                ],
            }
        ],
    )  # what `campfleet archive` takes (moto completes it at once)
    assert run_stack_policy(pack, fewer) == []
