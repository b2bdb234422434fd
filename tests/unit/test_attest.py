"""Ship attestation over the control API: identity documents, the group check, one key each."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from campfleet import protocol as p
from campfleet.agent.client import MuxClient, MuxRejected
from campfleet.identity import DOCUMENT_PATH, RSA2048_PATH, TestIdentityAuthority
from campfleet.mux.attest import Attestor, AttestRefused, KnownInstances, local_attestor
from campfleet.mux.cloud import AwsCloud, InstanceFacts
from campfleet.protocol import ShipState as S
from tests.unit.test_control import Running

AUTHORITY = TestIdentityAuthority()
SHIP_A, SHIP_B = "i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2"
RUN_1, RUN_2 = "2026-12-02T09:00:00Z", "2026-12-02T11:00:00Z"


@pytest.fixture
def fleet(tmp_path: Path):
    instances = KnownInstances()
    instances.add([SHIP_A, SHIP_B])
    running = Running(tmp_path, attestor=local_attestor(AUTHORITY.trusted, instances))
    running.instances = instances
    yield running
    running.close()


def signed(ship_id: str, ip: str = "127.0.0.1", pending: str = RUN_1, **kw: str):
    items = AUTHORITY.sign(AUTHORITY.document(ship_id, ip, "local", pending_time=pending, **kw))
    return items[DOCUMENT_PATH], items[RSA2048_PATH]


def client(fleet: Running, ship_id: str) -> MuxClient:
    return MuxClient(f"http://127.0.0.1:{fleet.server.port}", ship_id)


def report(c: MuxClient, state: S = S.BOOTING) -> p.Desired:
    return c.report(p.Report(c.ship_id, "local-a", "127.0.0.1", 9000, state))


def refusal(call) -> MuxRejected:
    with pytest.raises(MuxRejected) as info:
        call()
    return info.value


def test_each_ship_attests_for_its_own_key_and_signs_with_it(fleet: Running) -> None:
    a, b = client(fleet, SHIP_A), client(fleet, SHIP_B)
    key_a, key_b = a.attest(*signed(SHIP_A)), b.attest(*signed(SHIP_B))
    assert len(key_a) == p.KEY_BYTES and key_a != key_b
    assert report(a) == p.Desired() and report(b) == p.Desired()
    assert fleet.registry.get(SHIP_A).state is S.BOOTING
    # The registry keeps a salt per ship, never a key (keys derive from the mux's secret).
    with sqlite3.connect(fleet.registry.path) as db:
        dump = "\n".join(db.iterdump())
    assert fleet.registry.ship_key(SHIP_A).salt in dump
    assert key_a.hex() not in dump and key_b.hex() not in dump


def test_an_eavesdropper_learns_nothing_that_signs(fleet: Running) -> None:
    """Everything on the wire of an attestation: neither contains nor opens to the key."""
    c = client(fleet, SHIP_A)
    path, body, headers = c.challenge_message()
    status, _, answer = fleet.post(path, body, headers)
    wire = [body, answer]
    nonce = c.nonce(status, answer)
    path, body, headers, state = c.attest_message(nonce, *signed(SHIP_A))
    status, _, answer = fleet.post(path, body, headers)
    wire += [body, answer]
    key = c.attested(status, answer, state)
    assert all(key.hex().encode() not in m and key not in m for m in wire)
    # With the whole transcript but not the ship's X25519 private key: nothing opens.
    sent, got = json.loads(wire[2]), json.loads(wire[3])
    guess, _ = p.x25519_keypair()
    shared = p.x25519_shared(guess, bytes.fromhex(got["public"]))
    context = p.attest_context(SHIP_A, nonce, bytes.fromhex(sent["public"]), shared)
    with pytest.raises(ValueError, match="does not authenticate"):
        p.unwrap_key(got["key"], got["tag"], shared, context)


@pytest.mark.parametrize(
    ("case", "kind", "reason"),
    [
        ("other authority", "forged", "not signed by a trusted certificate"),
        ("altered document", "forged", "differs from the one the signature embeds"),
        ("another ship's document", "untrusted", "'i-0aaaaaaaaaaaaaaa1''s, not"),
        ("document address is not the connection's", "untrusted", "is not the connection's"),
        ("other region", "untrusted", "from region 'eu-west-1'; this fleet is in local"),
        ("unknown instance", "untrusted", "is unknown to the cloud"),
        ("other Auto Scaling group", "untrusted", "in group 'someone-elses-ships', not"),
        ("instance has another address", "untrusted", "private address is 127.0.0.9"),
        ("stopped instance", "untrusted", "is stopped"),
    ],
)
def test_forged_or_foreign_identity_is_refused_with_a_reason(
    fleet: Running, case: str, kind: str, reason: str
) -> None:
    ship = SHIP_B
    document, signature = signed(ship)
    if case == "other authority":
        items = TestIdentityAuthority().sign(AUTHORITY.document(ship, "127.0.0.1", "local"))
        document, signature = items[DOCUMENT_PATH], items[RSA2048_PATH]
    elif case == "altered document":
        document = document.replace(b"t3.medium", b"t3.xlarge")
    elif case == "another ship's document":
        document, signature = signed(SHIP_A)
    elif case == "document address is not the connection's":
        document, signature = signed(ship, ip="10.0.3.7")
    elif case == "other region":
        items = AUTHORITY.sign(AUTHORITY.document(ship, "127.0.0.1", "eu-west-1"))
        document, signature = items[DOCUMENT_PATH], items[RSA2048_PATH]
    elif case == "unknown instance":
        ship = "i-0ccccccccccccccc3"
        document, signature = signed(ship)
    else:
        group, ip, state = "", "127.0.0.1", "running"
        if case == "other Auto Scaling group":
            group = "someone-elses-ships"
        elif case == "instance has another address":
            ip = "127.0.0.9"
        else:
            state = "stopped"
        fleet.instances.facts[ship] = InstanceFacts(ship, state, group, ip)
    refused = refusal(lambda: client(fleet, ship).attest(document, signature))
    assert refused.kind == kind and reason in refused.reason, refused.reason
    assert fleet.server.key(ship) is None and fleet.server.rejections[kind] == 1


def test_a_replayed_attestation_is_refused(fleet: Running) -> None:
    c = client(fleet, SHIP_A)
    path, body, headers = c.challenge_message()
    nonce = c.nonce(*fleet.post(path, body, headers)[::2])
    path, body, headers, _ = c.attest_message(nonce, *signed(SHIP_A))
    assert fleet.post(path, body, headers)[0] == 200
    status, _, answer = fleet.post(path, body, headers)  # the same request, captured and resent
    assert status == 409 and "nonce is unknown or already used" in json.loads(answer)["reason"]
    # A nonce asked for by one ship does not serve another.
    path, body, headers = client(fleet, SHIP_B).challenge_message()
    nonce = c.nonce(*fleet.post(path, body, headers)[::2])
    path, body, headers, _ = c.attest_message(nonce, *signed(SHIP_A))
    status, _, answer = fleet.post(path, body, headers)
    assert status == 409 and f"issued to {SHIP_B}" in json.loads(answer)["reason"]


def test_first_attestation_of_a_run_wins_and_a_new_run_renews(fleet: Running) -> None:
    c = client(fleet, SHIP_A)
    first = c.attest(*signed(SHIP_A))
    # The answer may have been lost: until the key signs something, the run may try again.
    second = c.attest(*signed(SHIP_A))
    assert second != first
    report(c)
    # Now the key is in use: the same (static) document buys no other key, nor an older one.
    for pending, reason in ((RUN_1, "already attested for this run"),
                            ("2026-12-01T09:00:00Z", "an old copy is replayed")):  # fmt: skip
        refused = refusal(lambda pending=pending: client(fleet, SHIP_A).attest(
            *signed(SHIP_A, pending=pending)))  # fmt: skip
        assert refused.kind == "replay" and reason in refused.reason, refused.reason
    assert fleet.server.key(SHIP_A) == second
    # Stopped and started: EC2 gives the run a new pendingTime; it attests, the old key dies.
    third = client(fleet, SHIP_A).attest(*signed(SHIP_A, pending=RUN_2))
    assert third not in (first, second)
    refused = refusal(lambda: report(c))  # `c` still signs with the old key
    assert refused.kind == "forged"


def test_signed_message_from_a_ship_without_key_says_attest(fleet: Running) -> None:
    stale = MuxClient(f"http://127.0.0.1:{fleet.server.port}", SHIP_A, b"k" * p.KEY_BYTES)
    refused = refusal(lambda: report(stale))
    assert refused.kind == p.UNATTESTED and "attest" in refused.reason
    assert fleet.registry.get(SHIP_A) is None


def test_oversized_or_junk_attestation_bodies_are_refused(fleet: Running) -> None:
    for body, status in [
        (b"x" * (p.MAX_ATTEST_BODY + 1), 413),
        (b"not json", 400),
        (json.dumps({"v": 1, "ship_id": "i-1"}).encode(), 400),
        (json.dumps({"v": 1, "ship_id": SHIP_A, "nonce": 5}).encode(), 400),
    ]:
        code, _, answer = fleet.post(p.ATTEST_PATH, body, {})
        assert code == status and json.loads(answer)["reason"]
    code, _, answer = fleet.post(p.ATTEST_CHALLENGE_PATH, b'{"v": 1, "ship_id": "x"}', {})
    assert code == 400 and "EC2 instance id" in json.loads(answer)["reason"]


# -- the cloud side: EC2's view of the Auto Scaling group (moto) --------------------------------


@pytest.fixture
def aws(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        ec2 = boto3.client("ec2", "eu-west-1")
        autoscaling = boto3.client("autoscaling", "eu-west-1")
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(
            VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone="eu-west-1a"
        )["Subnet"]["SubnetId"]
        ec2.create_launch_template(
            LaunchTemplateName="ships-template",
            LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"},
        )
        for group in ("campfleet-dev-ships", "other-ships"):
            autoscaling.create_auto_scaling_group(
                AutoScalingGroupName=group,
                LaunchTemplate={"LaunchTemplateName": "ships-template"},
                MinSize=1, MaxSize=1, DesiredCapacity=1, VPCZoneIdentifier=subnet,
            )  # fmt: skip
        members = {
            i["AutoScalingGroupName"]: i["InstanceId"]
            for i in autoscaling.describe_auto_scaling_instances()["AutoScalingInstances"]
        }
        lone = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=subnet)
        members["none"] = lone["Instances"][0]["InstanceId"]
        yield ec2, members


def _address(ec2, instance_id: str) -> str:
    found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return found["PrivateIpAddress"]


def test_only_instances_of_the_stacks_group_attest(aws) -> None:
    """DescribeInstances (moto) says which group launched an instance and its address."""
    ec2, members = aws
    cloud = AwsCloud("eu-west-1", "dev", "campfleet-dev-ships", max_attempts=1)
    attestor = Attestor(
        AUTHORITY.trusted, cloud.instances, group_name="campfleet-dev-ships", region="eu-west-1"
    )

    async def attest(instance_id: str, ip: str, peer: str) -> str:
        items = AUTHORITY.sign(AUTHORITY.document(instance_id, ip, "eu-west-1"))
        request = {
            "ship_id": instance_id,
            "nonce": attestor.challenge(instance_id, peer),
            "document": items[DOCUMENT_PATH].decode(),
            "rsa2048": items[RSA2048_PATH].decode(),
            "public": "00" * 32,
        }
        try:
            return (await attestor.check(request, peer)).instance_id
        except AttestRefused as exc:
            return exc.reason

    async def all_cases() -> list[str]:
        ours, theirs, lone = members["campfleet-dev-ships"], members["other-ships"], members["none"]
        ip = _address(ec2, ours)
        return await asyncio.gather(
            attest(ours, ip, ip),
            attest(theirs, _address(ec2, theirs), _address(ec2, theirs)),
            attest(lone, _address(ec2, lone), _address(ec2, lone)),
            attest(ours, "10.0.1.250", "10.0.1.250"),  # a document claiming another address
            attest("i-0000000000000dead", "10.0.1.9", "10.0.1.9"),
        )

    ok, other, lone, moved, unknown = asyncio.run(all_cases())
    assert ok == members["campfleet-dev-ships"]
    assert "in group 'other-ships', not the fleet's 'campfleet-dev-ships'" in other
    assert "in no Auto Scaling group" in lone
    assert "private address is 10.0.1." in moved and "the identity document says" in moved
    assert "unknown to the cloud" in unknown
