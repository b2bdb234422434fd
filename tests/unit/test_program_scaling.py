"""The Pulumi program under mocks with sessions, a warm pool and demand mode (issue 12)."""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from campfleet import policies
from campfleet.evaluate import Evaluation, evaluate
from components.config import read_stack_config

ROOT = Path(__file__).resolve().parents[2]
GROUP = "aws:autoscaling/group:Group"
SCHEDULE = "aws:autoscaling/schedule:Schedule"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
CLASS = {
    **read_stack_config(ROOT, "prod"),
    "campfleet:sessions": ["Mon-Fri 08:30-17:30", "Sat 22:00-02:00"],
    "campfleet:timeZone": "America/New_York",
    "campfleet:sessionLeadMinutes": 20,
    "campfleet:idleShips": 4,
    "campfleet:warmPool": 40,
}
DEMAND = {**CLASS, "campfleet:fleetMode": "demand", "campfleet:spareShips": 6}


@pytest.fixture(scope="module")
def scheduled() -> Evaluation:
    return evaluate(ROOT, "prod", CLASS)


@pytest.fixture(scope="module")
def demand() -> Evaluation:
    return evaluate(ROOT, "prod", DEMAND)


@pytest.fixture(scope="module")
def fixed() -> Evaluation:
    return evaluate(ROOT, "dev")


def test_schedules_in_the_stack_time_zone_with_the_lead(scheduled: Evaluation) -> None:
    actions = {r.name: r.inputs for r in scheduled.of_type(SCHEDULE)}
    group = scheduled.one(GROUP)
    assert set(actions) == {
        "ships-session-0-start",
        "ships-session-0-end",
        "ships-session-1-start",
        "ships-session-1-end",
    }
    for inputs in actions.values():
        assert inputs["timeZone"] == "America/New_York"
        assert inputs["autoscalingGroupName"] == group.inputs["name"]
        # Only the desired capacity moves; min and max stay as Pulumi set them.
        assert inputs["minSize"] == -1 and inputs["maxSize"] == -1
    start, end = actions["ships-session-0-start"], actions["ships-session-0-end"]
    assert start["recurrence"] == "10 8 * * 1,2,3,4,5"  # 08:30 - 20 minutes
    assert start["desiredCapacity"] == 150
    assert end["recurrence"] == "30 17 * * 1,2,3,4,5"
    assert end["desiredCapacity"] == 4
    # Saturday night: starts 21:40 Saturday, ends 02:00 Sunday.
    assert actions["ships-session-1-start"]["recurrence"] == "40 21 * * 6"
    assert actions["ships-session-1-end"]["recurrence"] == "0 2 * * 0"
    names = {a["scheduledActionName"] for a in actions.values()}
    assert len(names) == 4
    assert all(r.parent and "ShipFleet" in r.parent for r in scheduled.of_type(SCHEDULE))


@pytest.mark.parametrize("fixture", ["scheduled", "demand"])
def test_capacity_is_left_to_schedules_and_the_mux(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    evaluation: Evaluation = request.getfixturevalue(fixture)
    group = evaluation.one(GROUP)
    assert group.ignore_changes == {"desiredCapacity"}
    assert group.inputs["minSize"] == 4  # idleShips: the schedule may go down to it
    assert group.inputs["maxSize"] == 165
    policy = evaluation.config.policy()
    # Created at the schedule's size of the moment (this test and the program run within
    # the same minute; a session edge in between would show here as 150 vs 4).
    assert group.inputs["desiredCapacity"] == policy.scheduled(datetime.now(UTC))
    # Never protected at launch: instance refresh skips protected ships (the mux protects
    # exactly the ships attendees hold).
    assert group.inputs.get("protectFromScaleIn") in (None, False)


def test_demand_mode_leaves_sessions_to_the_mux(demand: Evaluation) -> None:
    assert demand.of_type(SCHEDULE) == []


def test_fixed_stack_keeps_todays_group(fixed: Evaluation) -> None:
    group = fixed.one(GROUP)
    assert group.ignore_changes == frozenset()
    assert group.inputs["desiredCapacity"] == group.inputs["minSize"] == 3
    assert "warmPool" not in group.inputs
    assert group.inputs.get("protectFromScaleIn") in (None, False)
    assert fixed.of_type(SCHEDULE) == []


def test_sessions_alone_also_ignore_capacity() -> None:
    ev = evaluate(
        ROOT,
        "dev",
        {
            "campfleet:ships": 3,
            "campfleet:sessions": ["Daily 09:00-17:00"],
            "aws:region": "eu-west-1",
        },
    )
    group = ev.one(GROUP)
    assert group.ignore_changes == {"desiredCapacity"}
    assert group.inputs.get("protectFromScaleIn") in (None, False)  # fixed: AWS scales in
    assert len(ev.of_type(SCHEDULE)) == 2


def test_warm_pool_settings(scheduled: Evaluation) -> None:
    group = scheduled.one(GROUP).inputs
    assert group["warmPool"] == {
        "poolState": "Stopped",
        "minSize": 40,
        "maxGroupPreparedCapacity": 40,  # equal to minSize: an absolute pool size
        "instanceReusePolicy": {"reuseOnScaleIn": False},
    }
    hooks = {h["lifecycleTransition"]: h for h in group["initialLifecycleHooks"]}
    launching = hooks["autoscaling:EC2_INSTANCE_LAUNCHING"]
    assert launching["defaultResult"] == "CONTINUE"
    assert launching["name"] == "campfleet-prod-ships-launching"
    # The agent learns the hook's name, to complete it once its image is pulled.
    template = scheduled.one(LAUNCH_TEMPLATE).inputs
    cloud_config = yaml.safe_load(gzip.decompress(base64.b64decode(template["userData"])))
    (agent,) = [f for f in cloud_config["write_files"] if f["path"].endswith("agent.json")]
    assert json.loads(agent["content"])["launchHookName"] == "campfleet-prod-ships-launching"


def test_mux_gets_the_fleet_settings_and_desired_capacity_permission(
    demand: Evaluation, scheduled: Evaluation
) -> None:
    def statements(ev: Evaluation) -> dict:
        doc = next(r for r in ev.resources if r.name == "mux-policy").inputs["policy"]
        return {s["Sid"]: s for s in json.loads(doc)["Statement"]}

    scaling = {"autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"}
    assert scaling <= set(statements(demand)["ShipGroup"]["Action"])
    assert not scaling & set(statements(scheduled)["ShipGroup"]["Action"])
    mux = next(r for r in demand.resources if r.name == "mux-instance").inputs
    cloud_config = yaml.safe_load(gzip.decompress(base64.b64decode(mux["userDataBase64"])))
    (settings,) = [f for f in cloud_config["write_files"] if f["path"].endswith("mux.json")]
    fleet = json.loads(settings["content"])["fleet"]
    assert fleet == {
        "mode": "demand",
        "spareShips": 6,
        "idleShips": 4,
        "sessions": ["Mon-Fri 08:30-17:30", "Sat 22:00-02:00"],
        "timeZone": "America/New_York",
        "sessionLeadMinutes": 20,
        "idleMinutes": 60,
    }


def test_policy_pack_still_green(scheduled: Evaluation, demand: Evaluation) -> None:
    assert [str(f) for f in policies.check(scheduled)] == []
    assert [str(f) for f in policies.check(demand)] == []
