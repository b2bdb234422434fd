"""Periodic snapshots of the attendees' home volumes: a Data Lifecycle Manager policy.

DLM (not the mux, not a cron job) takes the snapshots, so they happen even while the mux is
down, and prunes them to `snapshotsKept` per volume. It targets the one tag only this stack's
home volumes carry (campfleet:home-of = stack) and copies each volume's tags onto its
snapshots, so a snapshot says which stack, event, slot and owner it holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from campfleet.tags import HOME_OF_TAG, SNAPSHOT_TAG, STACK_TAG, tagged

DLM_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "dlm.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


@dataclass(frozen=True)
class HomeSnapshotsArgs:
    stack: str
    every_hours: int  # 1, 2, 3, 4, 6, 8, 12 or 24 (components/config.py checks)
    kept: int
    region: pulumi.Input[str]
    account_id: pulumi.Input[str]
    tags: dict[str, str]


def dlm_statements(stack: str, region: str, account_id: str) -> list[dict]:
    """What DLM needs for EBS snapshot policies, scoped to this stack (AWS's managed
    AWSDataLifecycleManagerServiceRole allows it on every volume and snapshot)."""
    volumes = f"arn:aws:ec2:{region}:{account_id}:volume/*"
    snapshots = f"arn:aws:ec2:{region}::snapshot/*"
    return [
        {
            "Sid": "SnapshotHomeVolumes",
            "Effect": "Allow",
            "Action": ["ec2:CreateSnapshot", "ec2:CreateSnapshots"],
            "Resource": volumes,
            "Condition": {"StringEquals": {f"aws:ResourceTag/{HOME_OF_TAG}": stack}},
        },
        {
            # The new snapshot itself (it has no tags yet when CreateSnapshot is authorized).
            "Sid": "NewSnapshots",
            "Effect": "Allow",
            "Action": ["ec2:CreateSnapshot", "ec2:CreateSnapshots", "ec2:CreateTags"],
            "Resource": snapshots,
        },
        {
            "Sid": "PruneSnapshots",
            "Effect": "Allow",
            "Action": "ec2:DeleteSnapshot",
            "Resource": snapshots,
            "Condition": {"StringEquals": {f"aws:ResourceTag/{HOME_OF_TAG}": stack}},
        },
        {
            "Sid": "Describe",
            "Effect": "Allow",
            # AWS supports no resource scoping for Describe* calls.
            "Action": [
                "ec2:DescribeAvailabilityZones",
                "ec2:DescribeInstances",
                "ec2:DescribeSnapshots",
                "ec2:DescribeVolumes",
            ],
            "Resource": "*",
        },
        {
            # DLM's own managed EventBridge rules (as in AWS's managed service-role policy,
            # AWSDataLifecycleManagerServiceRole), and no other rule.
            "Sid": "ManagedRules",
            "Effect": "Allow",
            "Action": [
                "events:PutRule",
                "events:DeleteRule",
                "events:DescribeRule",
                "events:EnableRule",
                "events:DisableRule",
                "events:ListTargetsByRule",
                "events:PutTargets",
                "events:RemoveTargets",
            ],
            "Resource": f"arn:aws:events:{region}:{account_id}:rule/"
            "AwsDataLifecycleRule.managed-cwe.*",
        },
    ]


class HomeSnapshots(pulumi.ComponentResource):
    """IAM role for DLM + one lifecycle policy over this stack's home volumes."""

    def __init__(
        self, name: str, args: HomeSnapshotsArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("campfleet:index:HomeSnapshots", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix = f"campfleet-{args.tags[STACK_TAG]}-{name}"
        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=DLM_TRUST,
            description=f"campfleet {args.stack}: DLM snapshots of the home volumes",
            tags=tagged(args.tags, f"{prefix}-role"),
            opts=child,
        )
        policy = aws.iam.RolePolicy(
            f"{name}-policy",
            role=role.id,
            policy=pulumi.Output.all(args.region, args.account_id).apply(
                lambda values: json.dumps(
                    {"Version": "2012-10-17", "Statement": dlm_statements(args.stack, *values)},
                    sort_keys=True,
                )
            ),
            opts=child,
        )
        lifecycle = aws.dlm.LifecyclePolicy(
            f"{name}-policy-dlm",
            description=f"campfleet {args.stack} home volumes every {args.every_hours} h",
            execution_role_arn=role.arn,
            state="ENABLED",
            policy_details=aws.dlm.LifecyclePolicyPolicyDetailsArgs(
                resource_types=["VOLUME"],
                target_tags={HOME_OF_TAG: args.stack},
                schedules=[
                    aws.dlm.LifecyclePolicyPolicyDetailsScheduleArgs(
                        name=f"every {args.every_hours} h, keep {args.kept}",
                        create_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleCreateRuleArgs(
                            interval=args.every_hours, interval_unit="HOURS"
                        ),
                        retain_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleRetainRuleArgs(
                            count=args.kept
                        ),
                        # stack, event, slot, owner, home-of: from the volume to each snapshot
                        copy_tags=True,
                        tags_to_add={SNAPSHOT_TAG: "periodic"},
                    )
                ],
            ),
            tags=tagged(args.tags, f"{prefix}-policy"),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[policy]),
        )
        self.policy_id = lifecycle.id
        self.register_outputs({"policyId": lifecycle.id, "roleArn": role.arn})
