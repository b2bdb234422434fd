"""The README stays true: exactly the two set-up commands, every config key, and the cost
table equal to what `campfleet plan` computes today."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from campfleet.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_set_up_has_exactly_the_two_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", section("Set up"), re.S)
    assert len(blocks) == 1
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines()]
    assert [c for c in commands if c] == ["make local", "make test"]


def test_every_config_key_is_documented() -> None:
    schema = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    table = section("Configuration")
    documented = set(re.findall(r"^\| `campfleet:(\w+)`", table, re.M))
    assert set(schema) <= documented, set(schema) - documented
    for key, spec in schema.items():
        if "default" in spec and spec["default"] not in ("", []):
            row = next(line for line in table.splitlines() if f"`campfleet:{key}`" in line)
            assert json.dumps(spec["default"]).strip('"') in row, key


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_cost_table_matches_plan(stack: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--stack", stack, "--project-dir", str(ROOT), "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    row = next(line for line in section("Cost").splitlines() if line.startswith(f"| {stack} |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:] == [
        f"{plan['ships']:,}",
        f"{plan['vcpus']:,}",
        f"{plan['ebsGiB']:,} GiB",
        f"${plan['costPerHourUsd']:,.2f}",
        f"${plan['costPerEventDayUsd']:,.2f}",
        f"${plan['costPerDayUsd']:,.2f}",
    ]


def test_lifecycle_shows_each_step_with_its_command() -> None:
    """Issue 13: plan -> up -> event -> archive -> destroy -> restore, in that order."""
    from campfleet.cli import build_parser

    text = section("Lifecycle: plan, up, event, archive, destroy, restore")
    [block] = re.findall(r"```sh\n(.*?)```", text, re.S)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    commands = [c for c in commands if c]
    order = [
        "campfleet plan --stack myevent",
        "pulumi up",
        "campfleet archive --stack myevent",
        "pulumi config set campfleet:protectHomeVolumes false",
        "pulumi up && pulumi destroy",
        "pulumi config set campfleet:restoreFrom ssm:/campfleet/myevent/archive-manifest",
    ]
    positions = [next(i for i, c in enumerate(commands) if c.startswith(o)) for o in order]
    assert positions == sorted(positions)
    parser = build_parser()
    for command in commands:
        if command.startswith("campfleet "):
            parser.parse_args(command.split()[1:])  # every flag shown exists
