"""`campfleet preflight`: quotas via botocore's Stubber (moto lacks these quotas), usage via moto,
and the whole command over the real dev/prod stack files with both."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from campfleet.cli import CliError, main, preflight
from campfleet.needs import Needs, aws_data

ROOT = Path(__file__).resolve().parents[2]
REGION = "eu-west-1"
ITEMS = aws_data()["quotas"]["items"]


def quotas_client(answers: list[tuple[dict[str, Any], Optional[float], Optional[float]]]) -> Any:
    """A Service Quotas client answering, per item in order: (applied, AWS default).

    None = NoSuchResourceException for that call (and the next source is tried).
    """
    client = boto3.client(
        "service-quotas",
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    stub = Stubber(client)
    for item, applied, default in answers:
        params = {"ServiceCode": item["serviceCode"], "QuotaCode": item["quotaCode"]}
        for operation, value in (
            ("get_service_quota", applied),
            ("get_aws_default_service_quota", default),
        ):
            if value is None:
                stub.add_client_error(operation, "NoSuchResourceException", expected_params=params)
            else:
                stub.add_response(operation, {"Quota": {"Value": value}}, params)
                break
    stub.activate()
    return client


def test_quota_applied_then_aws_default_then_data_file() -> None:
    gp3, vcpu, eip = ITEMS["ebs-gp3"], ITEMS["vcpu-standard"], ITEMS["eip"]
    client = quotas_client([(gp3, 2.0, None), (vcpu, None, 32.0), (eip, None, None)])
    # TiB quota comes back in GiB
    assert preflight.read_quota(client, gp3) == preflight.Quota(2048.0, "applied")
    assert preflight.read_quota(client, vcpu) == preflight.Quota(32.0, "AWS default")
    assert preflight.read_quota(client, eip) == preflight.Quota(5.0, "aws.json default")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


AMI = "ami-12c6146b"  # one of moto's built-in images (listing them all takes seconds)


def _tag(stack: str) -> list[dict[str, Any]]:
    return [{"Key": "campfleet:stack", "Value": stack}]


@pytest.mark.slow
def test_usage_counts_detached_volumes_and_skips_this_stacks_own(aws_env: None) -> None:
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        ec2.run_instances(ImageId=AMI, MinCount=2, MaxCount=2, InstanceType="t3.xlarge")
        ec2.run_instances(
            ImageId=AMI,
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.large",
            TagSpecifications=[{"ResourceType": "instance", "Tags": _tag("dev")}],
        )
        zone = f"{REGION}a"
        for _ in range(3):  # detached home volumes left from an earlier event
            ec2.create_volume(AvailabilityZone=zone, Size=100, VolumeType="gp3")
        ec2.create_volume(
            AvailabilityZone=zone,
            Size=500,
            VolumeType="gp3",
            TagSpecifications=[{"ResourceType": "volume", "Tags": _tag("dev")}],
        )
        ec2.allocate_address(Domain="vpc")
        ec2.create_internet_gateway()
        ec2.create_vpc(
            CidrBlock="10.9.0.0/16",
            TagSpecifications=[{"ResourceType": "vpc", "Tags": _tag("dev")}],
        )
        ec2.create_security_group(GroupName="other-team", Description="x")
        ec2.create_internet_gateway(
            TagSpecifications=[{"ResourceType": "internet-gateway", "Tags": _tag("dev")}]
        )
        usage = preflight.read_usage(ec2, "dev")
    # two t3.xlarge of another workload = 8 vCPUs; this stack's own t3.large not counted
    assert usage.amounts["vcpu-standard"] == 8
    # 300 GiB detached gp3; this stack's 500 GiB volume not counted
    assert usage.amounts["ebs-gp3"] == 300
    assert usage.detached_volumes == 3
    assert usage.detached_gib == 300
    # moto's root volumes (8 GiB gp2 each) of the two foreign instances
    assert usage.amounts["ebs-gp2"] == 16
    assert usage.amounts["eip"] == 1
    # the default VPC's group and the other team's; not this stack's VPC's default group
    assert usage.amounts["security-groups"] == 2
    assert usage.amounts["eni"] == 2
    assert usage.amounts["vpcs"] == 1  # moto's default VPC; this stack's own not counted
    assert usage.amounts["internet-gateways"] == 1  # this stack's own gateway not counted


def _row(key: str, need: float, in_use: float, quota: float) -> preflight.Row:
    return preflight.Row(key, ITEMS[key], need, in_use, preflight.Quota(quota, "applied"))


def test_shortfall_names_the_quota_code_and_the_request_command() -> None:
    rows = [
        _row("ebs-gp3", need=3000, in_use=300, quota=2048),
        _row("vcpu-standard", need=8, in_use=0, quota=32),
    ]
    lines = preflight.shortfall_lines(rows, REGION)
    assert lines[0] == (
        "SHORTFALL Storage for General Purpose SSD (gp3) volumes, in TiB: need 3,000 GiB + in use "
        "300 GiB = 3,300 GiB > quota 2,048 GiB (2 TiB); request L-7A658B76 (ebs) of at least "
        "4 TiB:"
    )
    assert lines[1] == (
        "  aws service-quotas request-service-quota-increase --region eu-west-1 "
        "--service-code ebs --quota-code L-7A658B76 --desired-value 4"
    )
    assert "servicequotas/home/services/ebs/quotas/L-7A658B76" in lines[2]
    assert len(lines) == 3  # the vCPU line fits: no shortfall named for it


def test_check_pairs_needs_with_usage_and_quotas() -> None:
    needs = Needs(
        ships=2,
        instances={"t3.large": 3},
        ebs_gib={"gp3": 100},
        elastic_ips=1,
        network_interfaces=3,
        security_groups=3,
        nat_gateways=0,
        interface_endpoint_azs=0,
    )
    usage = preflight.Usage({"vcpu-standard": 4.0, "eip": 5.0}, 0, 0)
    quotas = {
        key: preflight.Quota(float(item["default"]) * item.get("unitGiB", 1), "x")
        for key, item in ITEMS.items()
    }
    rows = {row.key: row for row in preflight.check(needs, usage, quotas)}
    assert set(rows) == {
        "vcpu-standard",
        "ebs-gp3",
        "eip",
        "eni",
        "security-groups",
        "vpcs",
        "internet-gateways",
    }
    assert rows["vpcs"].need == 0  # a Needs without a VPC still shows the row
    assert rows["vcpu-standard"].headroom == 5 - 4 - 6
    assert rows["eip"].headroom == 5 - 5 - 1
    assert rows["ebs-gp3"].headroom == 50 * 1024 - 100


# --- the whole command: real stack files, moto EC2, stubbed Service Quotas ---


def stack_needs(stack: str) -> dict[str, float]:
    """What the stack needs per quota item (the evaluated program; not what is tested here)."""
    from campfleet.cli import evaluate_stack, stack_values
    from campfleet.needs import needs_for

    return preflight.needed_items(needs_for(evaluate_stack(ROOT, stack, stack_values(ROOT, stack))))


def run_preflight(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    stack: str,
    applied: dict[str, Optional[float]],
    setup: Any = None,
) -> tuple[int, str, str]:
    """`campfleet preflight` against moto EC2 (prepared by `setup(ec2)`) and stubbed quotas:
    `applied` maps quota item -> applied value (None = not applied: the AWS default, 'None'
    too, so the data file's default is used)."""
    order = list(stack_needs(stack))
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        if setup:
            setup(ec2)
        answers = [(ITEMS[key], applied.get(key), None) for key in order]
        sq = quotas_client(answers)
        monkeypatch.setattr(preflight, "aws_clients", lambda region: (ec2, sq))
        code = main(["preflight", "--stack", stack, "--project-dir", str(ROOT)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_fits_when_quotas_are_large(
    aws_env: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    big = {key: 10_000.0 for key in ITEMS}
    code, out, err = run_preflight(capsys, monkeypatch, "dev", big)
    assert code == 0, out + err
    assert "campfleet preflight: stack dev, region eu-west-1" in out
    need = stack_needs("dev")
    vcpu_row = next(line for line in out.splitlines() if "L-1216C47A" in line)
    cells = [c.strip() for c in vcpu_row.split("|")[1:-1]]
    assert cells[1:5] == ["L-1216C47A", f"{need['vcpu-standard']:,.0f}", "0", "10,000"]
    assert cells[5] == f"{10_000 - need['vcpu-standard']:,.0f}"
    assert cells[6] == "applied"
    gp3_row = next(line for line in out.splitlines() if "L-7A658B76" in line)
    assert "10,240,000 GiB (10000 TiB)" in gp3_row
    assert "preflight OK: stack dev fits the quotas of eu-west-1" in out
    assert "SHORTFALL" not in out


def _leftovers(ec2: Any) -> None:
    """An earlier event's detached volumes and a running workload of another team."""
    for _ in range(4):
        ec2.create_volume(AvailabilityZone=f"{REGION}b", Size=250, VolumeType="gp3")
    ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="m5.xlarge")


@pytest.mark.slow
def test_shortfalls_name_every_quota_code_and_exit_1(
    aws_env: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    need = stack_needs("prod")
    # by hand: 150 t3.large ships + 10% refresh surge (15) + one t3.large mux, 2 vCPUs each
    assert need["vcpu-standard"] == (150 + 15 + 1) * 2
    # vCPU: the data file's default (5); gp3: 1 TiB applied, less than need + leftovers
    applied = {"ebs-gp3": 1.0, "eip": 100.0, "eni": 5000.0, "security-groups": 2500.0}
    code, out, err = run_preflight(capsys, monkeypatch, "prod", applied, _leftovers)
    assert code == 1, err
    assert err == ""
    vcpu_total = need["vcpu-standard"] + 4  # + the m5.xlarge already running
    assert (
        f"SHORTFALL Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances: need "
        f"{need['vcpu-standard']:,.0f} + in use 4 = {vcpu_total:,.0f} > quota 5; request "
        f"L-1216C47A (ec2) of at least {vcpu_total:.0f} vCPU:" in out
    )
    assert (
        "aws service-quotas request-service-quota-increase --region eu-west-1 --service-code ec2 "
        f"--quota-code L-1216C47A --desired-value {vcpu_total:.0f}" in out
    )
    gp3_total = need["ebs-gp3"] + 4 * 250  # + the detached volumes
    gp3_line = next(x for x in out.splitlines() if x.startswith("SHORTFALL Storage for General"))
    assert (
        f"(gp3) volumes, in TiB: need {need['ebs-gp3']:,.0f} GiB + in use 1,000 GiB = "
        f"{gp3_total:,.0f} GiB > quota 1,024 GiB (1 TiB); request L-7A658B76 (ebs) of at least "
        f"{-(-gp3_total // 1024):.0f} TiB:" in gp3_line
    )
    assert "in use includes 4 detached EBS volume(s), 1,000 GiB, in state 'available'" in out
    assert "preflight FAILED: 2 shortfall(s)" in out
    vcpu_row = next(line for line in out.splitlines() if "| L-1216C47A" in line)
    assert vcpu_row.rstrip(" |").endswith("aws.json default")


def test_bad_stack_name_is_exit_2(aws_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["preflight", "--stack", "../etc", "--project-dir", str(ROOT)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "stack name '../etc': expected letters, digits" in err
    assert "Traceback" not in err


def test_no_credentials_is_exit_2_without_reaching_aws(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    code = main(["preflight", "--stack", "dev", "--project-dir", str(ROOT)])
    _out, err = capsys.readouterr()
    assert code == 2
    assert err.strip() == (
        "campfleet: no AWS credentials: run `aws configure` or `aws sso login`, or set "
        "AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (`campfleet plan` needs none)"
    )


def test_region_comes_from_flag_then_stack_then_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert preflight.resolve_region("us-west-2", {"aws:region": "eu-west-1"}) == "us-west-2"
    assert preflight.resolve_region(None, {"aws:region": "eu-west-1"}) == "eu-west-1"
    assert preflight.resolve_region(None, {}) == "ap-south-1"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(CliError, match="no AWS region: pass --region"):
        preflight.resolve_region(None, {})


def test_bad_config_is_exit_2_with_the_programs_lines(
    aws_env: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (tmp_path / "Pulumi.event.yaml").write_text(
        "config:\n  campfleet:ships: many\n  campfleet:availabilityZones: 0\n"
    )
    code = main(["preflight", "--stack", "event", "--project-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.splitlines() == [
        "campfleet: stack config 'event' has 2 problems:",
        '  campfleet:ships: got "many" (a string); expected an integer from 1 to 5000',
        "  campfleet:availabilityZones: got 0 (an integer); expected an integer from 1 to 6",
    ]


MUX_TAGS = [
    {
        "ResourceType": "elastic-ip",
        "Tags": [
            {"Key": "campfleet:stack", "Value": "dev"},
            {"Key": "campfleet:role", "Value": "mux"},
        ],
    }
]


@pytest.mark.parametrize("case", ["right", "wrong", "unresolved", "before-up"])
def test_domain_without_a_zone_checks_its_record_against_the_elastic_ip(
    case: str, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No hostedZoneId: the organizer creates the record; preflight says which, then checks."""
    config = SimpleNamespace(domain_name="jupyter.example.org", hosted_zone_id="")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        ec2.allocate_address(Domain="vpc")  # another stack's address: never taken for ours
        mine = ""
        if case != "before-up":
            mine = ec2.allocate_address(Domain="vpc", TagSpecifications=MUX_TAGS)["PublicIp"]
        answer = {"right": [mine], "wrong": ["198.51.100.9"]}.get(case, [])
        monkeypatch.setattr(preflight, "resolve_ipv4", lambda name: answer)
        text, ok = preflight.dns_check(ec2, "dev", config)
    expected = {
        "right": (f"DNS: jupyter.example.org resolves to {mine}, the mux's Elastic IP", True),
        "wrong": (
            f"DNS FAILED: jupyter.example.org resolves to 198.51.100.9, not the mux's Elastic "
            f"IP {mine}; set its A record to {mine} (no certificate can be issued until it does)",
            False,
        ),
        "unresolved": (
            f"DNS FAILED: jupyter.example.org resolves to nothing, not the mux's Elastic IP "
            f"{mine}; set its A record to {mine} (no certificate can be issued until it does)",
            False,
        ),
        "before-up": (
            "DNS: after `pulumi up`, create the A record jupyter.example.org -> the mux's "
            "Elastic IP (stack output muxDnsRecord), then run preflight again to check it",
            True,
        ),
    }[case]
    assert (text, ok) == expected
