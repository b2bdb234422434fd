"""`campfleet plan` over the real program: numbers checked against a hand computation from the
stack files and aws.json, every format, --base against a throw-away git repo, and the failures."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from campfleet.cli import main

ROOT = Path(__file__).resolve().parents[2]
DATA = json.loads((ROOT / "campfleet" / "data" / "aws.json").read_text())


def stack_config(project: Path, stack: str) -> dict[str, Any]:
    """Pulumi.yaml defaults overlaid with the stack file, read straight from the YAML."""
    schema = yaml.safe_load((project / "Pulumi.yaml").read_text())["config"]
    values = {key: spec.get("default") for key, spec in schema.items()}
    stack_doc = yaml.safe_load((project / f"Pulumi.{stack}.yaml").read_text())["config"]
    region = stack_doc.get("aws:region", "us-east-1")
    values.update(
        {k.split(":", 1)[1]: v for k, v in stack_doc.items() if k.startswith("campfleet:")}
    )
    return {**values, "region": region}


def hand_plan(project: Path, stack: str) -> dict[str, float]:
    """What the stack should cost, computed by hand from the design:

    ships x ship type + one mux; EBS gp3 = each ship's root + home volume, plus the mux's root
    and its 10 GiB state volume (hub database and ship registry survive a mux replacement);
    one Elastic IP on the mux; with shipEgress "nat", one NAT gateway and its Elastic IP,
    otherwise three interface endpoints in every zone.
    """
    c = stack_config(project, stack)
    prices = DATA["prices"]["regions"][c["region"]]
    specs = DATA["instanceTypes"]["specs"]
    ships, ship, mux = c["ships"], c["shipInstanceType"], c["muxInstanceType"]
    ebs_gib = ships * (c["shipRootVolumeGiB"] + c["homeVolumeGiB"]) + c["muxRootVolumeGiB"] + 10
    nat = 1 if c["shipEgress"] == "nat" else 0
    # without NAT: ECR API, ECR registry and Auto Scaling interface endpoints in every zone
    endpoint_azs = 0 if nat else 3 * c["availabilityZones"]
    per_hour = (
        ships * prices["ec2UsdPerHour"][ship]
        + prices["ec2UsdPerHour"][mux]
        + ebs_gib * prices["ebsUsdPerGBMonth"]["gp3"] / 730
        + (1 + nat) * prices["publicIpv4UsdPerHour"]
        + nat * prices["natGatewayUsdPerHour"]
        + endpoint_azs * prices["interfaceEndpointUsdPerHourPerAz"]
        # periodic snapshots (issue 13): one full copy of every home volume, priced per GB-month
        + (ships * c["homeVolumeGiB"] * prices["ebsSnapshotUsdPerGBMonth"] / 730)
        * (c["snapshotEveryHours"] > 0)
    )
    return {
        "ships": ships,
        "vcpus": ships * specs[ship]["vcpus"] + specs[mux]["vcpus"],
        "memoryGiB": ships * specs[ship]["memoryGiB"] + specs[mux]["memoryGiB"],
        "ebsGiB": ebs_gib,
        "costPerHourUsd": per_hour,
    }


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_json_matches_the_hand_computation(stack: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "plan", "--stack", stack, "--project-dir", str(ROOT), "--format", "json"
    )
    assert code == 0, err
    got = json.loads(out)
    want = hand_plan(ROOT, stack)
    for key in ("ships", "vcpus", "memoryGiB", "ebsGiB"):
        assert got[key] == want[key], key
    assert got["costPerHourUsd"] == pytest.approx(want["costPerHourUsd"], abs=1e-5)
    assert got["costPerEventDayUsd"] == pytest.approx(8 * want["costPerHourUsd"], abs=1e-4)
    assert got["costPerDayUsd"] == pytest.approx(24 * want["costPerHourUsd"], abs=1e-4)
    assert got["region"] == got["priceRegion"] == stack_config(ROOT, stack)["region"]
    assert got["pricesReadOn"] == DATA["prices"]["readOn"]
    # one home volume per ship, and the mux's state volume
    assert got["resources"]["aws:ebs/volume:Volume"] == want["ships"] + 1
    assert got["policyFindings"] == []  # the shipped stacks pass every policy


def test_prod_hand_figures_are_what_we_expect() -> None:
    """Pin the hand computation itself, so a silent change of prices or stack files shows."""
    want = hand_plan(ROOT, "prod")
    assert want["ships"] == 150
    assert want["ebsGiB"] == 150 * (30 + 20) + 30 + 10


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--stack", "dev", "--project-dir", str(ROOT))
    assert code == 0, err
    want = hand_plan(ROOT, "dev")
    assert "campfleet plan: stack dev, region eu-west-1" in out
    lines = {line.split("|")[1].strip(): line for line in out.splitlines() if line.count("|") >= 3}
    assert lines["ships"].split("|")[2].strip() == str(want["ships"])
    assert lines["vCPUs"].split("|")[2].strip() == str(want["vcpus"])
    assert lines["cost USD/hour"].split("|")[2].strip() == f"{want['costPerHourUsd']:.2f}"
    assert "policy: every policy passes" in out
    assert f"prices read {DATA['prices']['readOn']}" in out
    assert "\x1b[" not in out  # plain text when not a terminal


def test_strict_fails_on_a_mandatory_violation(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--stack", "dev", "--project-dir", str(ROOT), "--max-ships", "2"]
    code, out, _ = run(capsys, *argv)
    assert code == 0  # reported, not failed, without --strict
    assert "[ship-count-ceiling]" in out
    code, out, _ = run(capsys, *argv, "--strict")
    assert code == 1
    assert "policy: 2 violation(s)" in out  # desiredCapacity and minSize of the group
    assert (
        "[ship-count-ceiling] ships-group: desiredCapacity is 3, above the ceiling of 2 ships"
        in out
    )


def test_unknown_stack_is_one_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--stack", "nope", "--project-dir", str(ROOT))
    assert code == 2
    assert out == ""
    assert "Pulumi.nope.yaml: no such stack file; stacks here: dev, prod" in err
    assert "Traceback" not in err


def test_no_project_is_one_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "plan", "--stack", "dev")
    assert code == 2
    assert err.strip() == (
        f"campfleet: no Pulumi.yaml in {tmp_path.resolve()} or any parent directory; "
        "run from the campfleet project or pass --project-dir"
    )


# --- a throw-away copy of the project in its own git repository, for --base and bad configs ---

IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    ".campfleet",
    "node_modules",
    "tests",
    "benchmarks",
    "*.egg-info",
    "__pycache__",
    ".*cache",
)


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=30,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=IGNORE)
    git(copy, "init", "-q", "-b", "main")
    git(copy, "add", "-A")
    git(copy, "commit", "-q", "-m", "base")
    return copy


def set_ships(project: Path, stack: str, ships: int) -> None:
    path = project / f"Pulumi.{stack}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["config"]["campfleet:ships"] = ships
    path.write_text(yaml.safe_dump(doc))


def test_base_diff_is_a_pr_comment(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = hand_plan(project, "dev")
    set_ships(project, "dev", 7)
    head = hand_plan(project, "dev")
    argv = ["plan", "--stack", "dev", "--project-dir", str(project), "--base", "main"]
    code, out, err = run(capsys, *argv, "--format", "markdown")
    assert code == 0, err
    assert out.startswith("### campfleet plan: stack `dev` vs `main`")
    assert "| ships | 3 | 7 | +4 |" in out
    assert (
        f"| vCPUs | {base['vcpus']} | {head['vcpus']} | +{head['vcpus'] - base['vcpus']} |" in out
    )
    delta = head["costPerHourUsd"] - base["costPerHourUsd"]
    assert (
        f"| cost USD/hour | {base['costPerHourUsd']:.2f} | {head['costPerHourUsd']:.2f} "
        f"| +{delta:.2f} |" in out
    )
    assert "| `aws:ebs/volume:Volume` | 4 | 8 | +4 |" in out

    code, out, err = run(capsys, *argv, "--format", "json")
    assert code == 0, err
    got = json.loads(out)
    assert got["ships"] == 7 and got["base"]["ships"] == 3 and got["base"]["ref"] == "main"
    assert got["change"]["ships"] == 4
    assert got["change"]["resources"]["aws:ebs/volume:Volume"] == 4
    assert got["change"]["costPerHourUsd"] == pytest.approx(delta, abs=1e-5)


def test_new_stack_file_has_an_empty_base(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(project / "Pulumi.dev.yaml", project / "Pulumi.staging.yaml")
    argv = ["plan", "--stack", "staging", "--project-dir", str(project), "--base", "main"]
    code, out, err = run(capsys, *argv, "--format", "markdown")
    assert code == 0, err
    assert "Pulumi.staging.yaml did not exist at `main`: the base is empty." in out
    assert "| ships | 0 | 3 | +3 |" in out
    code, out, _ = run(capsys, *argv)
    assert "Pulumi.staging.yaml did not exist at main: the base is empty." in out


def test_endpoints_egress_is_priced_by_hand(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = project / "Pulumi.prod.yaml"
    doc = yaml.safe_load(path.read_text())
    zones = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    doc["config"].update(
        {
            "campfleet:shipEgress": "endpoints",
            "campfleet:shipAmi": "ami-0123456789abcdef0",
            "campfleet:availabilityZones": 3,
            "campfleet:zoneNames": zones,
        }
    )
    path.write_text(yaml.safe_dump(doc))
    argv = ["plan", "--stack", "prod", "--project-dir", str(project), "--format", "json"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    got = json.loads(out)
    want = hand_plan(project, "prod")
    assert got["costPerHourUsd"] == pytest.approx(want["costPerHourUsd"], abs=1e-5)
    assert "aws:ec2/natGateway:NatGateway" not in got["resources"]
    items = {line["item"]: line["usdPerHour"] for line in got["costLines"]}
    assert items["interface endpoint-AZs x 9 (+ per GB)"] == pytest.approx(9 * 0.011)


def test_bad_base_ref(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--stack", "dev", "--project-dir", str(project), "--base", "no-such-ref"]
    code, _out, err = run(capsys, *argv)
    assert code == 2
    assert (
        err.strip()
        == f"campfleet: --base no-such-ref: not a commit in the git repository at {project}"
    )


def test_bad_config_gives_the_programs_clear_lines(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = project / "Pulumi.dev.yaml"
    path.write_text("config:\n  campfleet:ships: -4\n  campfleet:allowedCidrs: ['10.0.0.1/8']\n")
    code, out, err = run(capsys, "plan", "--stack", "dev", "--project-dir", str(project))
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert lines[0] == "campfleet: stack config 'dev' has 2 problems:"
    assert lines[1] == "  campfleet:ships: got -4 (an integer); expected an integer from 1 to 5000"
    assert lines[2].startswith('  campfleet:allowedCidrs: got "10.0.0.1/8" (a string); expected')
    assert "Traceback" not in err


def test_region_without_prices_falls_back_and_says_so(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = project / "Pulumi.dev.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["config"]["aws:region"] = "ap-south-1"
    path.write_text(yaml.safe_dump(doc))
    argv = ["plan", "--stack", "dev", "--project-dir", str(project), "--format", "json"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    got = json.loads(out)
    assert (got["region"], got["priceRegion"]) == ("ap-south-1", "us-east-1")
    assert got["notes"] == [
        "campfleet/data/aws.json has no prices for ap-south-1; showing us-east-1 prices",
        IP_NOTE,
    ]
    use1 = DATA["prices"]["regions"]["us-east-1"]["ec2UsdPerHour"]["t3.large"]
    assert got["costLines"][0] == {"item": "EC2 t3.large x 4", "usdPerHour": 4 * use1}


IP_NOTE = (
    "HTTPS on the Elastic IP itself (a shortlived certificate from "
    "https://acme-v02.api.letsencrypt.org/directory, renewed automatically); set "
    "campfleet:domainName to serve a name"
)


def test_plan_says_how_attendees_reach_the_mux(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["plan", "--stack", "dev", "--project-dir", str(project), "--format", "json"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert IP_NOTE in json.loads(out)["notes"]
    path = project / "Pulumi.dev.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["config"]["campfleet:domainName"] = "jupyter.example.org"
    path.write_text(yaml.safe_dump(doc))
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert (
        "HTTPS on jupyter.example.org (certificate from "
        "https://acme-v02.api.letsencrypt.org/directory); create its A record to the Elastic IP "
        "yourself (stack output muxDnsRecord)"
    ) in json.loads(out)["notes"]
    doc["config"]["campfleet:hostedZoneId"] = "Z0123456789ABC"
    path.write_text(yaml.safe_dump(doc))
    code, out, err = run(capsys, *argv[:-2])  # text output shows it too
    assert code == 0, err
    assert "Pulumi creates its A record in Route 53 zone Z0123456789ABC" in out
    assert "aws:route53/record:Record" in out


def test_instance_type_missing_from_the_data_file_is_one_clear_error(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = project / "Pulumi.dev.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["config"]["campfleet:shipInstanceType"] = "m7a.large"  # valid for AWS, not in aws.json
    path.write_text(yaml.safe_dump(doc))
    code, out, err = run(capsys, "plan", "--stack", "dev", "--project-dir", str(project))
    assert code == 2
    assert out == ""
    assert err.startswith(
        "campfleet: instance type 'm7a.large' is not in campfleet/data/aws.json (instanceTypes); "
        "add its vCPUs, memory and prices, or pick one of: c5.large, "
    )
    assert err.count("\n") == 1


def test_base_outside_a_git_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=IGNORE)
    argv = ["plan", "--stack", "dev", "--project-dir", str(copy), "--base", "main"]
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err == f"campfleet: --base main: {copy} is not in a git repository; drop --base\n"


def test_base_refuses_a_change_that_deletes_home_volumes(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: lowering ships deletes the highest slots, whoever owns them; plan says so."""
    set_ships(project, "prod", 148)
    argv = ["plan", "--stack", "prod", "--project-dir", str(project), "--base", "main"]
    code, out, err = run(capsys, *argv, "--strict", "--format", "json")
    assert code == 1, err
    findings = json.loads(out)["policyFindings"]
    assert findings == [
        f"[home-volumes-kept] ships-home-{slot:04d}: this change leaves home volume slot {slot} "
        "deleted; it may hold an attendee's files: archive first (`campfleet archive`) or keep "
        "campfleet:ships and the zones as they are"
        for slot in (148, 149)
    ]
    set_ships(project, "prod", 152)  # more ships: nothing deleted
    code, out, err = run(capsys, *argv, "--strict", "--format", "json")
    assert code == 0 and json.loads(out)["policyFindings"] == []
    # dev does not protect its volumes: the same change is advisory and --strict passes.
    set_ships(project, "dev", 2)
    argv = ["plan", "--stack", "dev", "--project-dir", str(project), "--base", "main"]
    code, out, err = run(capsys, *argv, "--strict", "--format", "json")
    assert code == 0, err
    [finding] = json.loads(out)["policyFindings"]
    assert finding.startswith("[home-volumes-kept] ships-home-0002: advisory: this change")


def test_check_owners_refuses_deleting_an_owned_volume(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from moto import mock_aws

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="eu-west-1")
        for slot, owner in ((0, "ann"), (3, "bob")):  # dev has 3 ships: slot 3 is gone
            tags = {"campfleet:stack": "dev", "campfleet:role": "home", "campfleet:slot": slot}
            tags["campfleet:owner"] = owner
            ec2.create_volume(
                AvailabilityZone="eu-west-1a",
                Size=10,
                TagSpecifications=[
                    {
                        "ResourceType": "volume",
                        "Tags": [{"Key": k, "Value": str(v)} for k, v in tags.items()],
                    }
                ],
            )
        argv = ["plan", "--stack", "dev", "--project-dir", str(ROOT), "--check-owners"]
        code, out, err = run(capsys, *argv, "--strict", "--format", "json")
    assert code == 1, err
    [finding] = json.loads(out)["policyFindings"]
    assert "(slot 3) holds bob's files and this update deletes it" in finding


def test_protected_stack_without_pinned_zones_gets_a_note(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = project / "Pulumi.prod.yaml"
    doc = yaml.safe_load(path.read_text())
    del doc["config"]["campfleet:zoneNames"]
    path.write_text(yaml.safe_dump(doc))
    argv = ["plan", "--stack", "prod", "--project-dir", str(project), "--format", "json"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert any(n.startswith("campfleet:zoneNames is not set") for n in json.loads(out)["notes"])
    code, out, err = run(
        capsys, "plan", "--stack", "prod", "--project-dir", str(ROOT), "--format", "json"
    )
    assert not any("zoneNames" in n for n in json.loads(out)["notes"])  # prod pins them
