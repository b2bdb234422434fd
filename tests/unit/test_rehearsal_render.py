"""What `campfleet rehearse` boots is what `pulumi up` would send (issue 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from campfleet.evaluate import evaluate
from campfleet.rehearsal.render import from_evaluation, unpack
from components import userdata

ROOT = Path(__file__).resolve().parents[2]
VALUES = {"aws:region": "eu-west-1", "campfleet:ships": 2}


@pytest.fixture(scope="module")
def evaluation():
    return evaluate(ROOT, "rehearsaltest", VALUES)


def test_user_data_is_the_launch_templates_text(evaluation) -> None:
    rendered = from_evaluation(evaluation, "rehearsaltest", "eu-west-1")
    template = evaluation.one("aws:ec2/launchTemplate:LaunchTemplate")
    mux = evaluation.one("aws:ec2/instance:Instance")
    # Byte for byte what EC2 would receive, packed the way components/userdata.py packs it.
    assert userdata.pack(rendered.ship_user_data) == template.inputs["userData"]
    assert userdata.pack(rendered.mux_user_data) == mux.inputs["userDataBase64"]
    assert rendered.mux_ip == mux.inputs["privateIp"]
    assert rendered.state_volume.replace("-", "") in rendered.mux_user_data
    assert rendered.ships == 2 and len(rendered.home_volumes) == 2
    assert {zone for zone, _ in rendered.ship_subnets} >= {z for _, z in rendered.home_volumes}


def test_secrets_are_in_ssm_not_in_user_data(evaluation) -> None:
    rendered = from_evaluation(evaluation, "rehearsaltest", "eu-west-1")
    assert "/campfleet/rehearsaltest/fleet-secret" in rendered.secrets
    for value in rendered.secrets.values():
        assert value not in rendered.ship_user_data
        assert value not in rendered.mux_user_data


def test_registry_digests_reach_the_user_data() -> None:
    first = from_evaluation(evaluate(ROOT, "rehearsaltest", VALUES), "rehearsaltest", "x")
    ship = first.images["ship"]
    digest = "sha256:" + "ab" * 32
    second = evaluate(ROOT, "rehearsaltest", VALUES, digests={ship: digest})
    text = unpack(second.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["userData"])
    assert f"{ship}@{digest}" in text
    assert f"{ship}@{digest}" not in first.ship_user_data
