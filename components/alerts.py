"""Alarms that page the organizer, and the mux's self-healing: created when alertEmail is set.

One SNS topic with the organizer's email subscription receives every alarm (and its return to
OK). The mux is a single instance, so its EC2 status checks carry EC2 actions: a failed system
check (the host under it) *recovers* it onto new hardware with the same instance id, private and
Elastic IP and EBS volumes; a failed instance check (its own OS) reboots it. The fleet alarms
watch AWS's Auto Scaling group metrics and the numbers the mux publishes every minute
(campfleet.mux.cloudwatch, the same condition as the Prometheus rules in docs/monitoring.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from campfleet.mux import cloudwatch
from campfleet.tags import tagged

PERIOD = 60  # seconds; EC2 status checks and the mux's metrics both arrive every minute
SYSTEM_CHECK_MINUTES = 2
INSTANCE_CHECK_MINUTES = 3
BELOW_ROOM_MINUTES = 5
GATE_CLOSED_MINUTES = 10
RECOVER = "recover"
REBOOT = "reboot"


@dataclass(frozen=True)
class AlarmSpec:
    """One CloudWatch alarm, before Pulumi: what it watches, when it fires, what it does."""

    key: str  # resource name suffix
    description: str
    namespace: str
    metric: str
    dimensions: dict[str, str]
    statistic: str
    comparison: str
    threshold: float
    minutes: int  # consecutive 1-minute periods that must breach
    treat_missing_data: str = "missing"
    ec2_action: str = ""  # RECOVER or REBOOT: an EC2 action besides the SNS notification


@dataclass(frozen=True)
class AlertsArgs:
    stack: str
    email: str
    monthly_budget_usd: int  # 0 = no budget alert
    ships: int
    region: pulumi.Input[str]
    mux_instance_id: pulumi.Input[str]
    ship_group_name: str
    tags: dict[str, str]


def fleet_alarms(stack: str, ships: int, group_name: str) -> list[AlarmSpec]:
    """The alarms on the ships and the gate (the mux's own need its instance id, see below)."""
    status = "Which ships and why: `campfleet status` or the fleet page <mux>/hub/fleet."
    return [
        AlarmSpec(
            key="ships-below-room",
            description=f"campfleet {stack}: fewer than {ships} ships (the room size) in "
            f"service for {BELOW_ROOM_MINUTES} minutes; the Auto Scaling group is not "
            "replacing them (quota? capacity in the zone?). See the group's activity "
            f"history for {group_name}. {status}",
            namespace="AWS/AutoScaling",
            metric="GroupInServiceInstances",
            dimensions={"AutoScalingGroupName": group_name},
            statistic="Minimum",
            comparison="LessThanThreshold",
            threshold=ships,
            minutes=BELOW_ROOM_MINUTES,
        ),
        AlarmSpec(
            key="ships-down",
            description=f"campfleet {stack}: one or more ships are lost (silent) or failed and "
            "not yet replaced; their attendees are being moved. The ids are the InstanceId "
            f"dimension of the {cloudwatch.NAMESPACE} metric {cloudwatch.SHIP_DOWN} (Stack "
            f"{stack}). {status}",
            namespace=cloudwatch.NAMESPACE,
            metric=cloudwatch.SHIPS_DOWN,
            dimensions={cloudwatch.STACK: stack},
            statistic="Maximum",
            comparison="GreaterThanOrEqualToThreshold",
            threshold=1,
            minutes=1,
            # The mux publishes it every minute; its silence is the status-check alarms' case.
            treat_missing_data="notBreaching",
        ),
        AlarmSpec(
            key="gate-closed",
            description=f"campfleet {stack}: the readiness gate has been closed for "
            f"{GATE_CLOSED_MINUTES} minutes: attendees who log in wait for a ship. Ships are "
            "not becoming available (boot or image failures?); an organizer can open the "
            f"gate from the fleet page. {status}",
            namespace=cloudwatch.NAMESPACE,
            metric=cloudwatch.GATE_OPEN,
            dimensions={cloudwatch.STACK: stack},
            statistic="Maximum",
            comparison="LessThanThreshold",
            threshold=1,
            minutes=GATE_CLOSED_MINUTES,
            treat_missing_data="notBreaching",
        ),
    ]


def mux_alarms(stack: str) -> list[AlarmSpec]:
    """EC2 status checks of the mux with their EC2 actions (dimensions set by the component)."""
    return [
        AlarmSpec(
            key="mux-system-check",
            description=f"campfleet {stack}: the mux failed its EC2 system status check (the "
            "host under it); EC2 is recovering it onto new hardware (same instance, IPs and "
            "volumes). Attendees' ships keep running; logins resume when it is back.",
            namespace="AWS/EC2",
            metric="StatusCheckFailed_System",
            dimensions={},
            statistic="Maximum",
            comparison="GreaterThanOrEqualToThreshold",
            threshold=1,
            minutes=SYSTEM_CHECK_MINUTES,
            ec2_action=RECOVER,
        ),
        AlarmSpec(
            key="mux-instance-check",
            description=f"campfleet {stack}: the mux failed its EC2 instance status check (its "
            "own OS: memory, disk, network); EC2 is rebooting it. The hub, the registry and "
            "every attendee's claim are on its state volume and come back with it.",
            namespace="AWS/EC2",
            metric="StatusCheckFailed_Instance",
            dimensions={},
            statistic="Maximum",
            comparison="GreaterThanOrEqualToThreshold",
            threshold=1,
            minutes=INSTANCE_CHECK_MINUTES,
            ec2_action=REBOOT,
        ),
    ]


class Alerts(pulumi.ComponentResource):
    """SNS topic + email subscription, the mux and fleet alarms, and the optional budget."""

    topic_arn: pulumi.Output[str]

    def __init__(
        self, name: str, args: AlertsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("campfleet:index:Alerts", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix = f"campfleet-{args.stack}"
        # Not KMS-encrypted: CloudWatch cannot publish to a topic under the AWS managed key
        # alias/aws/sns, and alarm texts hold no secrets (instance ids, counts).
        topic = aws.sns.Topic(
            f"{name}-topic",
            name=f"{prefix}-alerts",
            display_name=f"campfleet {args.stack}"[:100],
            tags=tagged(args.tags, f"{prefix}-alerts"),
            opts=child,
        )
        # AWS emails a confirmation link first: nothing is delivered until it is clicked.
        aws.sns.TopicSubscription(
            f"{name}-email", topic=topic.arn, protocol="email", endpoint=args.email, opts=child
        )
        specs = fleet_alarms(args.stack, args.ships, args.ship_group_name)
        for spec in mux_alarms(args.stack):
            specs.append(
                AlarmSpec(**{**spec.__dict__, "dimensions": {"InstanceId": args.mux_instance_id}})
            )
        for spec in specs:
            actions: list[pulumi.Input[str]] = [topic.arn]
            if spec.ec2_action:
                actions.insert(
                    0,
                    pulumi.Output.concat(
                        "arn:aws:automate:", args.region, ":ec2:", spec.ec2_action
                    ),
                )
            aws.cloudwatch.MetricAlarm(
                f"{name}-{spec.key}",
                name=f"{prefix}-{spec.key}",
                alarm_description=spec.description,
                namespace=spec.namespace,
                metric_name=spec.metric,
                dimensions=spec.dimensions,
                statistic=spec.statistic,
                comparison_operator=spec.comparison,
                threshold=spec.threshold,
                period=PERIOD,
                evaluation_periods=spec.minutes,
                datapoints_to_alarm=spec.minutes,
                treat_missing_data=spec.treat_missing_data,
                alarm_actions=actions,
                ok_actions=[topic.arn],  # the organizer also hears when it is over
                tags=tagged(args.tags, f"{prefix}-{spec.key}"),
                opts=child,
            )
        if args.monthly_budget_usd:
            aws.budgets.Budget(
                f"{name}-budget",
                name=f"{prefix}-monthly",
                budget_type="COST",
                limit_amount=str(args.monthly_budget_usd),
                limit_unit="USD",
                time_unit="MONTHLY",
                notifications=[
                    aws.budgets.BudgetNotificationArgs(
                        comparison_operator="GREATER_THAN",
                        threshold=100,
                        threshold_type="PERCENTAGE",
                        notification_type=kind,
                        subscriber_email_addresses=[args.email],
                    )
                    for kind in ("FORECASTED", "ACTUAL")
                ],
                tags=tagged(args.tags, f"{prefix}-monthly"),
                opts=child,
            )
        self.topic_arn = topic.arn
        self.register_outputs({"topicArn": topic.arn})
