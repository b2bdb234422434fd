"""The Alerts component under Pulumi mocks: topic, alarms, EC2 actions, budget; only on request."""

from __future__ import annotations

from pathlib import Path

import pytest

from campfleet import policies
from campfleet.evaluate import Evaluation, evaluate
from campfleet.mux import cloudwatch
from components.config import ConfigError, read_stack_config

ROOT = Path(__file__).resolve().parents[2]
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
TOPIC = "aws:sns/topic:Topic"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
BUDGET = "aws:budgets/budget:Budget"
ALERT_TYPES = {ALARM, TOPIC, SUBSCRIPTION, BUDGET, "campfleet:index:Alerts"}
EMAIL = "ops@example.org"


@pytest.fixture(scope="module")
def paged() -> Evaluation:
    """prod (150 ships) with an organizer to page and a budget, in eu-west-1."""
    values = {
        **read_stack_config(ROOT, "prod"),
        "campfleet:alertEmail": EMAIL,
        "campfleet:monthlyBudgetUsd": 2500,
    }
    return evaluate(ROOT, "prod", values)


def alarms(evaluation: Evaluation) -> dict[str, dict]:
    return {r.name.removeprefix("alerts-"): r.inputs for r in evaluation.of_type(ALARM)}


def test_no_alerts_without_an_email() -> None:
    for stack in ("dev", "prod"):
        evaluation = evaluate(ROOT, stack)
        assert not ALERT_TYPES & {r.type for r in evaluation.resources}, stack
        assert "alertTopicArn" not in evaluation.outputs


def test_topic_with_the_email_subscription(paged: Evaluation) -> None:
    topic = paged.one(TOPIC)
    assert topic.inputs["name"] == "campfleet-prod-alerts"
    subscription = paged.one(SUBSCRIPTION).inputs
    assert subscription == {**subscription, "protocol": "email", "endpoint": EMAIL}
    assert subscription["topic"] == topic.outputs["arn"] == paged.outputs["alertTopicArn"]
    component = paged.one("campfleet:index:Alerts")
    for resource in (topic, paged.one(SUBSCRIPTION), *paged.of_type(ALARM), paged.one(BUDGET)):
        assert resource.parent == component.urn, resource.name


def test_mux_status_checks_recover_and_reboot(paged: Evaluation) -> None:
    topic = paged.one(TOPIC).outputs["arn"]
    mux = next(r for r in paged.resources if r.name == "mux-instance").outputs["id"]
    found = alarms(paged)
    system, instance = found["mux-system-check"], found["mux-instance-check"]
    assert (system["namespace"], system["metricName"]) == ("AWS/EC2", "StatusCheckFailed_System")
    assert system["dimensions"] == instance["dimensions"] == {"InstanceId": mux}
    assert system["alarmActions"] == ["arn:aws:automate:eu-west-1:ec2:recover", topic]
    assert instance["metricName"] == "StatusCheckFailed_Instance"
    assert instance["alarmActions"] == ["arn:aws:automate:eu-west-1:ec2:reboot", topic]
    for alarm in (system, instance):
        assert alarm["statistic"] == "Maximum"
        assert alarm["comparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert alarm["threshold"] == 1 and alarm["period"] == 60
    assert system["evaluationPeriods"] == 2 and instance["evaluationPeriods"] == 3


def test_fleet_alarms_watch_the_right_metrics(paged: Evaluation) -> None:
    topic = paged.one(TOPIC).outputs["arn"]
    found = alarms(paged)
    assert set(found) == {
        "mux-system-check",
        "mux-instance-check",
        "ships-below-room",
        "ships-down",
        "gate-closed",
    }
    below = found["ships-below-room"]
    assert (below["namespace"], below["metricName"]) == (
        "AWS/AutoScaling",
        "GroupInServiceInstances",
    )
    assert below["dimensions"] == {"AutoScalingGroupName": "campfleet-prod-ships"}
    assert (below["comparisonOperator"], below["threshold"]) == ("LessThanThreshold", 150)
    assert below["period"] * below["evaluationPeriods"] == 300  # 5 minutes
    assert below["datapointsToAlarm"] == below["evaluationPeriods"]

    down = found["ships-down"]
    assert (down["namespace"], down["metricName"]) == ("campfleet", cloudwatch.SHIPS_DOWN)
    assert down["dimensions"] == {"Stack": "prod"}
    assert (down["comparisonOperator"], down["threshold"]) == ("GreaterThanOrEqualToThreshold", 1)
    assert (down["period"], down["evaluationPeriods"]) == (60, 1)
    assert "campfleet status" in down["alarmDescription"]
    assert cloudwatch.SHIP_DOWN in down["alarmDescription"]  # where the instance ids are

    gate = found["gate-closed"]
    assert (gate["metricName"], gate["comparisonOperator"], gate["threshold"]) == (
        cloudwatch.GATE_OPEN,
        "LessThanThreshold",
        1,
    )
    assert gate["period"] * gate["evaluationPeriods"] == 600
    for name in ("ships-down", "gate-closed"):
        assert found[name]["treatMissingData"] == "notBreaching", name
    for name, alarm in found.items():
        assert alarm["okActions"] == [topic], name
        assert topic in alarm["alarmActions"], name
        assert alarm["name"] == f"campfleet-prod-{name}"


def test_the_group_publishes_the_metric_the_alarm_watches(paged: Evaluation) -> None:
    group = paged.one(policies.AUTOSCALING_GROUP).inputs
    assert "GroupInServiceInstances" in group["enabledMetrics"]
    assert group["metricsGranularity"] == "1Minute"


def test_budget_at_the_monthly_amount(paged: Evaluation) -> None:
    budget = paged.one(BUDGET).inputs
    assert budget["budgetType"] == "COST" and budget["timeUnit"] == "MONTHLY"
    assert (budget["limitAmount"], budget["limitUnit"]) == ("2500", "USD")
    kinds = {n["notificationType"]: n for n in budget["notifications"]}
    assert set(kinds) == {"ACTUAL", "FORECASTED"}
    for notification in kinds.values():
        assert notification["threshold"] == 100
        assert notification["thresholdType"] == "PERCENTAGE"
        assert notification["subscriberEmailAddresses"] == [EMAIL]


def test_no_budget_when_unset() -> None:
    values = {**read_stack_config(ROOT, "dev"), "campfleet:alertEmail": EMAIL}
    evaluation = evaluate(ROOT, "dev", values)
    assert not evaluation.of_type(BUDGET)
    assert len(evaluation.of_type(ALARM)) == 5
    assert alarms(evaluation)["ships-below-room"]["threshold"] == 3


def test_policy_pack_passes_and_alerts_are_tagged(paged: Evaluation) -> None:
    assert [str(f) for f in policies.check(paged)] == []
    for resource in (*paged.of_type(ALARM), paged.one(TOPIC), paged.one(BUDGET)):
        tags = resource.inputs["tags"]
        assert tags["campfleet:stack"] == "prod" and tags["Name"], resource.name


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"campfleet:alertEmail": "not-an-address"}, "campfleet:alertEmail: got"),
        ({"campfleet:alertEmail": 7}, "campfleet:alertEmail: got 7 (an integer)"),
        ({"campfleet:monthlyBudgetUsd": 100}, "campfleet:monthlyBudgetUsd: 100 needs"),
        (
            {"campfleet:alertEmail": EMAIL, "campfleet:monthlyBudgetUsd": -5},
            "campfleet:monthlyBudgetUsd: got -5 (an integer); expected an integer from 0",
        ),
    ],
)
def test_bad_alert_config_is_one_clear_line(values: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        evaluate(ROOT, "dev", {**read_stack_config(ROOT, "dev"), **values})
    (line,) = err.value.problems
    assert line.startswith(problem), line
