"""campfleet.evaluate: repeatable in one process, no CLI, the shape plan and policies rely on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from campfleet.evaluate import ConfigError, Evaluation, evaluate

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_repeated_runs_in_one_process_do_not_leak() -> None:
    first = evaluate(ROOT, "dev")
    bigger = evaluate(ROOT, "dev", {"campfleet:ships": 5})
    again = evaluate(ROOT, "dev")
    assert first.counts() == again.counts()
    assert first.outputs == again.outputs
    assert [r.urn for r in first.resources] == [r.urn for r in again.resources]
    assert bigger.outputs["homeVolumeCount"] == 5
    assert bigger.counts()["aws:ebs/volume:Volume"] - first.counts()["aws:ebs/volume:Volume"] == 2


def test_values_default_to_the_stack_file() -> None:
    evaluation = evaluate(ROOT, "prod")
    assert isinstance(evaluation, Evaluation)
    assert evaluation.config.stack == "prod" and evaluation.config.ships == 150
    assert evaluation.outputs["homeVolumeCount"] == 150


def test_resource_shape_as_a_policy_pack_sees_it() -> None:
    evaluation = evaluate(ROOT, "dev")
    volume = evaluation.of_type("aws:ebs/volume:Volume")[0]
    assert volume.urn == (
        "urn:pulumi:dev::campfleet::campfleet:index:ShipFleet$aws:ebs/volume:Volume::" + volume.name
    )
    assert (
        volume.parent
        == "urn:pulumi:dev::campfleet::pulumi:pulumi:Stack$campfleet:index:ShipFleet::ships"
    )
    assert {"availabilityZone", "encrypted", "size", "tags", "type"} <= set(volume.inputs)
    assert isinstance(volume.inputs["size"], int)  # whole numbers come back as int
    assert volume.outputs["id"].startswith("vol-")
    ships = next(r for r in evaluation.resources if r.type == "campfleet:index:ShipFleet")
    assert not ships.custom
    assert ships.outputs["groupName"] == "campfleet-dev-ships"
    with pytest.raises(LookupError, match="expected one aws:ec2/subnet:Subnet, found 3"):
        evaluation.one("aws:ec2/subnet:Subnet")


def test_bad_config_raises_before_running() -> None:
    with pytest.raises(ConfigError) as caught:
        evaluate(ROOT, "dev", {"campfleet:ships": 0, "campfleet:availabilityZones": 9})
    assert caught.value.problems == [
        "campfleet:ships: got 0 (an integer); expected an integer from 1 to 5000",
        "campfleet:availabilityZones: got 9 (an integer); expected an integer from 1 to 6",
    ]
    with pytest.raises(ConfigError, match="no such stack file"):
        evaluate(ROOT, "nosuchstack")


@pytest.mark.slow
def test_works_from_another_directory_without_the_pulumi_cli(tmp_path: Path) -> None:
    """A fresh interpreter, cwd elsewhere, no pulumi binary on PATH: what `campfleet plan` does."""
    code = (
        "import sys; from campfleet.evaluate import evaluate; "
        f"e = evaluate({str(ROOT)!r}, 'dev'); print(e.outputs['shipGroupName'], len(e.resources))"
    )
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    name, count = result.stdout.split()
    assert name == "campfleet-dev-ships" and int(count) > 50
